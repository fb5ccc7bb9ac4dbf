"""API keys, isolation between keys, limits (401/429/503) and idempotent submits."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from fluxserve.api.app import create_app
from fluxserve.bootstrap import build_services
from fluxserve.cli.main import main
from fluxserve.config import Settings
from fluxserve.errors import ConfigurationError
from tests.helpers import job_count, poll_result

BODY = {"prompt": "a lighthouse", "width": 256, "height": 256, "steps": 1}


@dataclass
class Keys:
    client: TestClient
    alice: str
    bob: str
    tight: str  # at most 2 active jobs
    slow: str  # at most 2 submits a minute


def make_services(settings: Settings):
    services = build_services(settings)
    ring = services.keys
    secrets = {
        "alice": ring.create("alice")[1],
        "bob": ring.create("bob")[1],
        "tight": ring.create("tight", max_active=2)[1],
        "slow": ring.create("slow", rate_per_minute=2)[1],
    }
    return services, secrets


@pytest.fixture
def keyed(settings: Settings) -> Iterator[Keys]:
    """Keys required, no worker running: jobs stay queued (the limits count them)."""
    settings = settings.model_copy(update={"auth": "required"})
    services, secrets = make_services(settings)
    services.check_auth()
    app = create_app(settings, services)
    yield Keys(TestClient(app), **secrets)
    services.store.close()


def bfl_submit(client: TestClient, key: str | None, **headers: str):
    if key is not None:
        headers["x-key"] = key
    return client.post("/v1/flux-dev", json=BODY, headers=headers)


# --- 401 in each dialect ------------------------------------------------------------------


def test_no_key_is_a_401_in_each_dialects_shape(keyed):
    client = keyed.client
    bfl = bfl_submit(client, None)
    assert bfl.status_code == 401
    assert bfl.json()["detail"] == bfl.json()["message"]
    assert "x-key" in bfl.json()["detail"]
    fal = client.post("/queue/fal-ai/flux/dev", json={"prompt": "p"})
    assert fal.status_code == 401
    assert fal.json()["error_type"] == "unauthorized"
    openai = client.post("/v1/images/generations", json={"prompt": "p"})
    assert openai.status_code == 401
    assert openai.json()["error"]["code"] == "invalid_api_key"
    assert openai.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/get_result", params={"id": str(uuid.uuid4())}).status_code == 401
    assert client.get("/v1/models").status_code == 401
    assert job_count(client) == 0


def test_a_wrong_or_revoked_key_is_a_401(keyed):
    assert bfl_submit(keyed.client, "fsk_not-a-key").status_code == 401
    keyed.client.app.state.services.keys.revoke("bob")
    response = bfl_submit(keyed.client, keyed.bob)
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]


@pytest.mark.parametrize("scheme", ["x-key", "Key", "Bearer"])
def test_each_dialects_header_carries_the_key(keyed, scheme):
    headers = {"x-key": keyed.alice} if scheme == "x-key" else {
        "Authorization": f"{scheme} {keyed.alice}"
    }  # fmt: skip
    response = keyed.client.post("/v1/flux-dev", json=BODY, headers=headers)
    assert response.status_code == 200, response.text
    assert keyed.client.get("/v1/models", headers=headers).status_code == 200


def test_the_page_probes_and_metrics_need_no_key(keyed):
    for path in ("/", "/healthz", "/metrics"):
        assert keyed.client.get(path).status_code == 200, path
    assert keyed.client.get("/playground/models").status_code == 401  # the data does


# --- isolation ----------------------------------------------------------------------------


def test_another_keys_job_looks_exactly_like_an_unknown_one(keyed):
    client = keyed.client
    job_id = bfl_submit(client, keyed.alice).json()["id"]
    own = client.get("/v1/get_result", params={"id": job_id}, headers={"x-key": keyed.alice})
    assert own.json()["status"] == "Pending"

    other = client.get("/v1/get_result", params={"id": job_id}, headers={"x-key": keyed.bob})
    unknown_id = str(uuid.uuid4())
    unknown = client.get("/v1/get_result", params={"id": unknown_id}, headers={"x-key": keyed.bob})
    assert other.status_code == unknown.status_code
    assert other.json()["status"] == unknown.json()["status"] == "Task not found"
    assert {k: v for k, v in other.json().items() if k != "id"} == {
        k: v for k, v in unknown.json().items() if k != "id"
    }


def test_fal_status_result_and_cancel_hide_another_keys_request(keyed):
    client = keyed.client
    alice, bob = {"Authorization": f"Key {keyed.alice}"}, {"Authorization": f"Key {keyed.bob}"}
    submitted = client.post("/queue/fal-ai/flux/dev", json={"prompt": "p"}, headers=alice)
    request_id = submitted.json()["request_id"]
    base = f"/queue/fal-ai/flux/requests/{request_id}"
    assert client.get(f"{base}/status", headers=alice).status_code == 200
    assert client.get(f"{base}/status", headers=bob).status_code == 404
    assert client.get(base, headers=bob).status_code == 404
    assert client.put(f"{base}/cancel", headers=bob).status_code == 404
    # bob's cancel changed nothing: alice's request is still queued
    assert client.get(f"{base}/status", headers=alice).json()["status"] == "IN_QUEUE"


# --- limits -------------------------------------------------------------------------------


def test_the_active_task_limit_is_a_429_with_retry_after(keyed):
    for _ in range(2):
        assert bfl_submit(keyed.client, keyed.tight).status_code == 200
    refused = bfl_submit(keyed.client, keyed.tight)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) > 0
    assert "2 active tasks" in refused.json()["detail"]
    assert bfl_submit(keyed.client, keyed.alice).status_code == 200  # other keys go on
    # OpenAI's shape for the same limit
    headers = {"Authorization": f"Bearer {keyed.tight}"}
    openai = keyed.client.post("/v1/images/generations", json={"prompt": "p"}, headers=headers)
    assert openai.status_code == 429
    assert openai.json()["error"]["code"] == "rate_limit_exceeded"


def test_a_key_at_its_limit_is_refused_before_its_images_are_fetched(keyed):
    for _ in range(2):
        assert bfl_submit(keyed.client, keyed.tight).status_code == 200
    # A URL that would be refused (private address) if it were looked at: the 429 comes
    # first, so a client past its limit costs no fetch and no decode.
    body = {"prompt": "p", "input_image": "http://10.0.0.1/photo.png"}
    refused = keyed.client.post("/v1/flux-kontext-pro", json=body, headers={"x-key": keyed.tight})
    assert refused.status_code == 429, refused.text


def test_the_request_rate_limit_is_a_429_with_retry_after(keyed):
    for _ in range(2):
        assert bfl_submit(keyed.client, keyed.slow).status_code == 200
    refused = bfl_submit(keyed.client, keyed.slow)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 30
    assert "2 requests a minute" in refused.json()["detail"]


def test_a_full_queue_is_a_503_with_retry_after(settings):
    settings = settings.model_copy(update={"max_queue": 2})
    app = create_app(settings)
    client = TestClient(app)
    for _ in range(2):
        assert bfl_submit(client, None).status_code == 200
    refused = bfl_submit(client, None)
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) > 0
    assert "queue is full" in refused.json()["detail"]  # said, not masked as a fault
    openai = client.post("/v1/images/generations", json={"prompt": "p"})
    assert openai.status_code == 503
    assert openai.json()["error"]["code"] == "server_busy"
    assert "queue is full" in openai.json()["error"]["message"]
    fal = client.post("/queue/fal-ai/flux/dev", json={"prompt": "p"})
    assert fal.status_code == 503
    assert fal.json()["error_type"] == "server_busy"
    assert job_count(client) == 2
    app.state.services.store.close()


# --- idempotency --------------------------------------------------------------------------


def test_a_retried_submit_with_the_same_idempotency_key_returns_the_first_job(keyed):
    client = keyed.client
    first = bfl_submit(client, keyed.alice, **{"Idempotency-Key": "order-17"})
    again = bfl_submit(client, keyed.alice, **{"Idempotency-Key": "order-17"})
    assert first.json()["id"] == again.json()["id"]
    other = bfl_submit(client, keyed.alice, **{"Idempotency-Key": "order-18"})
    assert other.json()["id"] != first.json()["id"]
    # The key is the caller's own: the same header from another key is another job.
    bobs = bfl_submit(client, keyed.bob, **{"Idempotency-Key": "order-17"})
    assert bobs.json()["id"] != first.json()["id"]
    assert job_count(client) == 3


def test_an_idempotent_retry_is_answered_even_at_the_active_limit(keyed):
    headers = {"Idempotency-Key": "retry-me"}
    first = bfl_submit(keyed.client, keyed.tight, **headers).json()["id"]
    bfl_submit(keyed.client, keyed.tight)
    assert bfl_submit(keyed.client, keyed.tight, **headers).json()["id"] == first


def test_a_too_long_idempotency_key_names_the_header(keyed):
    response = bfl_submit(keyed.client, keyed.alice, **{"Idempotency-Key": "x" * 201})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "Idempotency-Key"]


def test_idempotent_fal_and_openai_submits(settings):
    with TestClient(create_app(settings)) as client:
        headers = {"Idempotency-Key": "fal-1"}
        first = client.post("/queue/fal-ai/flux/dev", json={"prompt": "p"}, headers=headers)
        again = client.post("/queue/fal-ai/flux/dev", json={"prompt": "p"}, headers=headers)
        assert first.json()["request_id"] == again.json()["request_id"]
        body = {"prompt": "p", "size": "256x256"}
        headers = {"Idempotency-Key": "openai-1"}
        one = client.post("/v1/images/generations", json=body, headers=headers)
        two = client.post("/v1/images/generations", json=body, headers=headers)
        assert one.status_code == two.status_code == 200
        assert one.json()["created"] == two.json()["created"]
        assert job_count(client) == 2


# --- end to end with a worker, and starting up ---------------------------------------------


def test_a_keyed_job_runs_to_ready(settings):
    settings = settings.model_copy(update={"auth": "required"})
    services, secrets = make_services(settings)
    with TestClient(create_app(settings, services)) as client:
        headers = {"x-key": secrets["alice"]}
        job_id = client.post("/v1/flux-dev", json=BODY, headers=headers).json()["id"]
        result = poll_result(client, job_id, headers=headers)
        assert result["status"] == "Ready"
        image = client.get(result["result"]["sample"])  # the signed URL is the credential
        assert image.status_code == 200


def test_auth_defaults_to_required_off_loopback(tmp_path):
    assert not Settings(data_dir=tmp_path).auth_required  # 127.0.0.1
    assert not Settings(data_dir=tmp_path, host="::1").auth_required
    assert not Settings(data_dir=tmp_path, host="localhost").auth_required
    assert Settings(data_dir=tmp_path, host="0.0.0.0").auth_required
    assert Settings(data_dir=tmp_path, host="gpu-box.internal").auth_required
    assert not Settings(data_dir=tmp_path, host="0.0.0.0", auth="off").auth_required
    assert Settings(data_dir=tmp_path, auth="required").auth_required


def test_a_public_server_without_keys_refuses_to_start(settings):
    public = settings.model_copy(update={"host": "0.0.0.0"})
    services = build_services(public)
    with pytest.raises(ConfigurationError, match="fluxserve keys create"):
        services.check_auth()
    services.keys.create("first")
    services.check_auth()  # one live key is enough
    services.store.close()


def test_serve_on_a_public_address_without_keys_exits_with_the_reason(tmp_path, capsys):
    code = main(["serve", "--host", "0.0.0.0", "--model", "tiny", "--data-dir", str(tmp_path)])
    assert code == 1
    assert "fluxserve keys create" in capsys.readouterr().err
    # --auth off is the explicit way to serve without keys (checked, not started here)
    services = build_services(
        Settings(host="0.0.0.0", auth="off", model=["tiny"], data_dir=tmp_path)
    )
    services.check_auth()
    services.store.close()


def test_keys_cli_prints_the_secret_alone_and_never_lists_it(tmp_path, capsys):
    data = ["--data-dir", str(tmp_path)]
    assert main(["keys", "create", "--name", "ci", "--max-active", "3", *data]) == 0
    secret = capsys.readouterr().out
    assert secret.count("\n") == 1
    assert secret.strip().startswith("fsk_")
    assert main(["keys", "list", "--json", *data]) == 0
    listed = capsys.readouterr().out
    assert secret.strip() not in listed
    assert '"max_active": 3' in listed
    assert main(["keys", "revoke", "ci", *data]) == 0
    assert main(["keys", "revoke", "ci", *data]) == 1  # already revoked
    assert main(["keys", "create", "--name", " ", *data]) == 2


# --- limits hold under concurrent submits -------------------------------------------------


def _race(store, owner_key, limits, count: int = 20) -> int:
    """``count`` threads create queued jobs at once under ``limits``; how many got in."""
    import threading

    from fluxserve.domain import GenerationRequest, Job
    from fluxserve.errors import TooManyRequests

    request = GenerationRequest(model="tiny", prompt="p", width=64, height=64, steps=1,
                                guidance=None, seed=1)  # fmt: skip
    created, barrier = [], threading.Barrier(count)

    def submit() -> None:
        barrier.wait()
        try:
            store.create(Job(id=str(uuid.uuid4()), request=request, owner=owner_key), limits)
            created.append(1)
        except TooManyRequests:  # and ServerBusy, its subclass
            pass

    threads = [threading.Thread(target=submit) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(created)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_concurrent_submits_cannot_pass_the_limits(backend, tmp_path, request):
    from fluxserve.store.tables import SubmitLimits

    if backend == "sqlite":
        from fluxserve.store.sqlite import SqliteJobStore

        store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    else:
        from fluxserve.store.postgres import PostgresJobStore

        store = PostgresJobStore(request.getfixturevalue("pg_url"))
    try:
        assert _race(store, "key_a", SubmitLimits(max_active=2)) == 2
        assert _race(store, "key_b", SubmitLimits(max_queue=5)) == 3  # 2 of key_a queued
    finally:
        store.close()
