"""What the README promises, each held against the real app (issue 17, bullet 10).

Every test quotes the promise it checks. Servers are the real app with the tiny model (a
thread worker), PostgreSQL for the cross-replica one, and a real HTTP server (uvicorn) where
a client must be able to hang up. Every wait is on a condition, with a deadline that fails
loudly; the only clock a test waits for is one a promise names (a revoked key's 5 s).
"""

from __future__ import annotations

import base64
import io
import json
import math
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from fluxserve.api.app import create_app
from fluxserve.cli.main import main
from fluxserve.config import Settings
from fluxserve.domain import JobStatus
from fluxserve.jobs.webhooks import RETRY_DELAYS, retry_delay
from fluxserve.store.tables import jobs as jobs_table
from tests.conftest import running_app as _running_app
from tests.helpers import (
    SMALL,
    free_port,
    job_count,
    only_job,
    poll_result,
    wait_for,
)
from tests.helpers import idle_app as _idle_app
from tests.tiny_aux import make_image_checker, shift_unsafe_bias

FAST = {**SMALL, "steps": 1, "seed": 3}
DEADLINE = 60.0  # seconds a wait may take before it fails: far more than any should need

# The app with its worker, and without (jobs stay queued), each closed however a test ends.
running_app = contextmanager(_running_app)
idle_app = contextmanager(_idle_app)


def tiny_settings(tmp_path: Path, tiny_model_dir: Path, **overrides) -> Settings:
    values = {"model": [str(tiny_model_dir)], "data_dir": tmp_path / "data",
              "worker_mode": "thread", **overrides}  # fmt: skip
    return Settings(**values)


def signed_expiry(url: str) -> int:
    return int(parse_qs(urlsplit(url).query)["exp"][0])


# -- "the link is signed and expires after 10 minutes" ---------------------------------------


def test_result_links_are_signed_for_10_minutes_by_default(client):
    assert Settings.model_fields["result_url_ttl"].default == 600
    job_id = client.post("/v1/flux-dev", json={"prompt": "a lighthouse", **FAST}).json()["id"]
    assert poll_result(client, job_id)["status"] == "Ready"

    before = int(time.time())
    sample = client.get("/v1/get_result", params={"id": job_id}).json()["result"]["sample"]
    openai = client.post("/v1/images/generations",
                         json={"prompt": "a fox", "size": "256x256", "steps": 1})  # fmt: skip
    after = int(time.time())
    assert openai.status_code == 200, openai.text
    for url in (sample, openai.json()["data"][0]["url"]):
        assert before + 600 <= signed_expiry(url) <= after + 600, url
        image = client.get(url)
        assert image.status_code == 200
        max_age = int(image.headers["cache-control"].rsplit("max-age=", 1)[1])
        assert 0 < max_age <= 600  # no cache keeps it past the link

    # The same image, signed to have run out a second ago, is refused: the expiry holds.
    key = urlsplit(sample).path.removeprefix("/files/")
    signer = client.app.state.services.storage.signer
    ended = before - 1
    params = {"exp": ended, "sig": signer.signature(key, ended)}
    expired = client.get(f"/files/{key}", params=params)
    assert expired.status_code == 403


# -- webhooks: "retried after 1 s, 5 s, 30 s, 2 min, then every 10 min" -----------------------


def test_the_shipped_webhook_retry_schedule(tmp_path, tiny_model_dir):
    """The schedule as shipped (not patched): the constants, the delay function over
    attempts 1..7, and the next try the server's own dispatcher records after each failed
    attempt."""
    assert RETRY_DELAYS == (1.0, 5.0, 30.0, 120.0, 600.0)
    expected = [1, 5, 30, 120, 600, 600, 600]  # the last one repeats
    assert [retry_delay(attempt) for attempt in range(1, 8)] == expected

    dead = f"http://127.0.0.1:{free_port()}/nobody-listens"  # a connection error: retried
    settings = tiny_settings(tmp_path, tiny_model_dir, allow_private_urls=True)
    with running_app(settings) as client:
        services = client.app.state.services
        dispatcher = services.webhooks  # built by the server, with no schedule given
        dispatcher.stop()  # the test makes each attempt itself, when it chooses
        assert dispatcher.delays == RETRY_DELAYS
        assert [retry_delay(n, dispatcher.delays) for n in range(1, 8)] == expected
        submitted = client.post("/v1/flux-dev",
                                json={"prompt": "a fox", **FAST, "webhook_url": dead})  # fmt: skip
        job_id = submitted.json()["id"]
        assert poll_result(client, job_id)["status"] == "Ready"
        store = services.store
        for attempt, delay in enumerate(expected, start=1):
            # Claim the delivery now, whenever its next try was due.
            (claimed,) = store.due_webhooks(time.time() + 10**6, 1, dispatcher.hold_seconds)
            assert (claimed.id, claimed.webhook_attempts) == (job_id, attempt)
            before = time.time()
            outcome = dispatcher.deliver(claimed)
            after = time.time()
            assert not outcome.delivered
            assert outcome.retry, outcome
            job = store.get(job_id)
            assert (job.webhook_state, job.webhook_attempts) == ("pending", attempt)
            assert "ConnectError" in job.webhook_error
            next_try = next_webhook_try(store, job_id)
            assert before + delay <= next_try <= after + delay, (attempt, next_try - before)


def next_webhook_try(store, job_id: str) -> float:
    with store.engine.connect() as conn:
        return conn.execute(
            jobs_table.select().with_only_columns(jobs_table.c.webhook_next_at)
            .where(jobs_table.c.id == job_id)
        ).scalar_one()  # fmt: skip


# -- "an output image blocked ... the image is left out, and moderation: {blocked_images,
# message} says so" (OpenAI) -----------------------------------------------------------------


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def images_of(response: httpx.Response) -> list[bytes]:
    assert response.status_code == 200, response.text
    return [base64.b64decode(item["b64_json"]) for item in response.json()["data"]]


def test_openai_leaves_a_blocked_image_out_and_says_so(tmp_path, tiny_model_dir):
    """Two images of one request straddle the checker's threshold: one is blocked, the
    other comes back, and ``moderation`` says one was left out."""
    from fluxserve.safety.classifiers import Classifier

    checker = make_image_checker(tmp_path / "checker", unsafe_bias=0.0)  # p ~ 0.46: allows
    body = {"prompt": "a red fox", "n": 2, "size": "256x256", "steps": 2,
            "response_format": "b64_json"}  # fmt: skip
    probes: dict[int, list[bytes]] = {}
    settings = tiny_settings(tmp_path / "probe", tiny_model_dir, image_checker=str(checker))
    with running_app(settings) as client:
        for seed in range(1, 11):  # a seed whose two images score apart, for float32
            probes[seed] = images_of(client.post("/v1/images/generations",
                                                 json={**body, "seed": seed}))  # fmt: skip
            assert len(probes[seed]) == 2
            scorer = Classifier("image-classification", checker, "probe")
            logits = [logit(scorer.score(Image.open(io.BytesIO(b)))[0]) for b in probes[seed]]
            if abs(logits[0] - logits[1]) > 0.006:
                break
        else:
            pytest.fail(f"no seed in 1..10 gave two images with distinct scores: {logits}")
    # The threshold of the default tolerance (2: 0.85) halfway between the two scores.
    shift_unsafe_bias(checker, logit(0.85) - (logits[0] + logits[1]) / 2)
    kept = min(range(2), key=lambda i: logits[i])

    settings = tiny_settings(tmp_path / "straddle", tiny_model_dir, image_checker=str(checker))
    with running_app(settings) as client:
        response = client.post("/v1/images/generations", json={**body, "seed": seed})
        assert images_of(response) == [probes[seed][kept]]  # the image that passed, alone
        result = response.json()
        assert set(result) == {"created", "data", "output_format", "moderation"}
        moderation = result["moderation"]
        assert set(moderation) == {"blocked_images", "message"}
        assert moderation["blocked_images"] == 1
        assert "1 of the 2 images were blocked" in moderation["message"]
        (item,) = result["data"]
        assert set(item) == {"b64_json", "revised_prompt"}


# -- API keys and limits -----------------------------------------------------------------------


def create_key(capsys, *args: str) -> str:
    """``fluxserve keys create ARGS``: the secret it prints."""
    assert main(["keys", "create", *args]) == 0
    return capsys.readouterr().out.strip()


def test_a_key_made_without_max_active_may_have_24_active_tasks(tmp_path, tiny_model_dir,
                                                                capsys):  # fmt: skip
    settings = tiny_settings(tmp_path, tiny_model_dir, auth="required")
    data = ["--data-dir", str(settings.data_dir)]
    secret = create_key(capsys, "--name", "alice", *data)
    assert main(["keys", "list", "--json", *data]) == 0
    assert json.loads(capsys.readouterr().out)["max_active"] == 24
    headers = {"x-key": secret}
    with idle_app(settings) as client:  # no worker: every job stays active
        for n in range(24):
            response = client.post("/v1/flux-dev", json={"prompt": f"fox {n}", **FAST},
                                   headers=headers)  # fmt: skip
            assert response.status_code == 200, (n, response.text)
        refused = client.post("/v1/flux-dev", json={"prompt": "one more", **FAST}, headers=headers)
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) > 0
        assert "24 active tasks" in refused.json()["detail"]
        assert job_count(client) == 24


def test_polls_are_not_counted_toward_the_rate(tmp_path, tiny_model_dir, capsys):
    settings = tiny_settings(tmp_path, tiny_model_dir, auth="required")
    secret = create_key(capsys, "--name", "poller", "--rate", "3",
                        "--data-dir", str(settings.data_dir))  # fmt: skip
    bfl, fal = {"x-key": secret}, {"Authorization": f"Key {secret}"}
    with idle_app(settings) as client:
        job_id = client.post("/v1/flux-dev", json={"prompt": "p", **FAST}, headers=bfl).json()["id"]
        queued = client.post("/queue/fal-ai/flux/dev", json={"prompt": "p"}, headers=fal)
        base = f"/queue/fal-ai/flux/requests/{queued.json()['request_id']}"

        def poll_everything() -> None:
            for _ in range(10):
                polled = client.get("/v1/get_result", params={"id": job_id}, headers=bfl)
                assert polled.json()["status"] == "Pending"
                assert client.get(f"{base}/status", headers=fal).json()["status"] == "IN_QUEUE"
                assert client.get(base, headers=fal).status_code == 400  # not completed yet

        poll_everything()  # 30 polls, after 2 of the 3 submits a minute
        third = client.post("/v1/flux-dev", json={"prompt": "p", **FAST}, headers=bfl)
        assert third.status_code == 200, third.text  # the polls took no submit's place
        fourth = client.post("/v1/flux-dev", json={"prompt": "p", **FAST}, headers=bfl)
        assert fourth.status_code == 429, fourth.text  # the limit is on
        assert "3 requests a minute" in fourth.json()["detail"]
        poll_everything()  # and a key at its rate still polls


def test_a_revoked_key_is_refused_by_every_replica_within_5_s(pg_url, tmp_path, tiny_model_dir,
                                                              capsys):  # fmt: skip
    """Two API replicas on one PostgreSQL database; the key is revoked with `fluxserve keys
    revoke`. Each replica may trust its last look-up for a moment, but a request made 5 s
    after the revocation is refused by both."""
    secret = create_key(capsys, "--name", "alice", "--database", pg_url,
                        "--data-dir", str(tmp_path / "cli"))  # fmt: skip
    headers = {"x-key": secret}
    replicas = [
        create_app(tiny_settings(tmp_path / name, tiny_model_dir, auth="required",
                                 database=pg_url, worker=False))
        for name in ("a", "b")
    ]  # fmt: skip
    clients = [TestClient(app) for app in replicas]
    try:

        def poll(client: TestClient) -> httpx.Response:
            return client.get("/v1/get_result", params={"id": str(uuid.uuid4())}, headers=headers)

        for client in clients:  # each replica has looked the key up, and holds it
            assert poll(client).status_code == 200
        revoked_at = time.monotonic()
        assert main(["keys", "revoke", "alice", "--database", pg_url,
                     "--data-dir", str(tmp_path / "cli")]) == 0  # fmt: skip
        still_open = list(clients)
        while still_open and time.monotonic() < revoked_at + 5.0:
            still_open = [c for c in still_open if poll(c).status_code != 401]
            time.sleep(0.05)
        for client in clients:  # from 5 s on, or sooner, each replica refuses it
            refused = poll(client)
            assert refused.status_code == 401, refused.text
            assert "revoked" in refused.json()["detail"]
    finally:
        for app in replicas:
            app.state.services.store.close()


# -- "GET /metrics is Prometheus' text format (OpenMetrics when the scraper asks for it)" -----

# What Prometheus sends when it scrapes.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


def test_metrics_are_openmetrics_when_asked(idle_client):
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
    from prometheus_client.parser import text_string_to_metric_families as text_families

    assert idle_client.post("/v1/flux-dev", json={"prompt": "p", **FAST}).status_code == 200
    plain = idle_client.get("/metrics")
    assert plain.status_code == 200
    assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# EOF" not in plain.text
    assert {f.name for f in text_families(plain.text)} >= {"fluxserve_queue_depth"}

    asked = idle_client.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
    assert asked.status_code == 200
    assert asked.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert asked.text.endswith("# EOF\n")
    families = {f.name: f for f in text_string_to_metric_families(asked.text)}  # strict parser
    assert families["fluxserve_queue_depth"].type == "gauge"
    assert [s.value for s in families["fluxserve_queue_depth"].samples] == [1.0]
    assert families["fluxserve_jobs_ended"].type == "counter"  # OpenMetrics drops _total


# -- "A synchronous request (fal `fal.run`, OpenAI) that carries [an Idempotency-Key] is not
# cancelled when its client goes away, so the retry gets the finished job." ----------------------

# A job of about two seconds on the tiny model: running long enough to hang up on.
LONG_OPENAI = {"prompt": "a lighthouse", "size": "768x768", "steps": 50, "seed": 7,
               "response_format": "b64_json"}  # fmt: skip
LONG_FAL = {"prompt": "a lighthouse", "image_size": {"width": 768, "height": 768},
            "num_inference_steps": 50, "seed": 7}  # fmt: skip
SYNC_ROUTES = {"openai": ("/v1/images/generations", LONG_OPENAI),
               "fal": ("/fal-ai/flux/dev", LONG_FAL)}  # fmt: skip


@dataclass
class Live:
    """The app behind a real HTTP server on loopback (so a client can hang up on it)."""

    app: FastAPI
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def served_over_http(settings: Settings) -> Iterator[Live]:
    import uvicorn

    live = Live(create_app(settings), free_port())
    config = uvicorn.Config(live.app, host="127.0.0.1", port=live.port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), "uvicorn to start", DEADLINE)
        assert server.started, "uvicorn stopped while starting: see the log"
        with httpx.Client(base_url=live.base) as http:
            wait_for(lambda: http.get("/readyz").status_code == 200, "readiness", DEADLINE)
        yield live
    finally:
        server.should_exit = True
        thread.join(DEADLINE)


def send_then_hang_up_once_running(live: Live, path: str, body: dict, headers: dict):
    """POST ``body`` on a raw connection, wait until its job runs, then close the
    connection without reading the answer: the client has gone away. The job."""
    payload = json.dumps(body).encode()
    head = "".join(f"{name}: {value}\r\n" for name, value in {
        "Host": f"127.0.0.1:{live.port}", "Content-Type": "application/json",
        "Content-Length": str(len(payload)), **headers}.items())  # fmt: skip
    with socket.create_connection(("127.0.0.1", live.port), timeout=DEADLINE) as conn:
        conn.sendall(f"POST {path} HTTP/1.1\r\n{head}\r\n".encode() + payload)
        job = wait_for(
            lambda: job_count(live) == 1 and (j := only_job(live)).status is JobStatus.RUNNING
            and j,
            "the request's job to start running",
            DEADLINE,
        )  # fmt: skip
        conn.shutdown(socket.SHUT_RDWR)
    return job


def ended(live: Live, job_id: str):
    return wait_for(
        lambda: (job := live.app.state.services.jobs.get(job_id)).status.is_terminal and job,
        f"job {job_id} to end",
        DEADLINE,
    )


@pytest.mark.parametrize("dialect", ["openai", "fal"])
def test_a_sync_request_with_an_idempotency_key_outlives_its_client(
    dialect, tmp_path, tiny_model_dir
):
    path, body = SYNC_ROUTES[dialect]
    headers = {"Idempotency-Key": f"leave-{dialect}"}
    with served_over_http(tiny_settings(tmp_path, tiny_model_dir)) as live:
        job = send_then_hang_up_once_running(live, path, body, headers)
        finished = ended(live, job.id)
        assert finished.status is JobStatus.SUCCEEDED, finished.error_message
        # The retry (same Idempotency-Key) is answered with the finished job, not a new one.
        with httpx.Client(base_url=live.base, timeout=DEADLINE) as http:
            retry = http.post(path, json=body, headers=headers)
        assert retry.status_code == 200, retry.text
        assert job_count(live) == 1
        (key,) = finished.result_keys
        stored = live.app.state.services.storage.get(key)
        if dialect == "openai":
            assert images_of(retry) == [stored]
            assert retry.json()["created"] == int(finished.finished_at)
        else:
            (image,) = retry.json()["images"]
            assert urlsplit(image["url"]).path == f"/files/{key}"
            assert retry.json()["seed"] == 7


def test_without_an_idempotency_key_a_client_that_leaves_cancels_its_job(tmp_path, tiny_model_dir):
    """The other side of the promise (and proof that the hang-up above is seen)."""
    path, body = SYNC_ROUTES["openai"]
    with served_over_http(tiny_settings(tmp_path, tiny_model_dir)) as live:
        job = send_then_hang_up_once_running(live, path, body, {})
        assert ended(live, job.id).status is JobStatus.CANCELLED
