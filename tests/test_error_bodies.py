"""The 401, 429 and 503 answers, field by field, on every dialect and route kind.

Each dialect has one error shape (README, "API keys and limits"; docs/api-compat.md):

- BFL: ``{"detail", "message"}``, the same text under both keys its clients read;
- fal: ``{"detail", "error_type"}`` and the ``X-Fal-Error-Type`` header;
- OpenAI: ``{"error": {"message", "type", "param", "code"}}``.

A 401 carries ``WWW-Authenticate``; a 429 or 503 carries ``Retry-After``. Apps run without
their lifespan (no worker), so the jobs that are let in stay queued and count.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi.testclient import TestClient

from fluxserve.api.app import create_app
from fluxserve.bootstrap import build_services
from fluxserve.config import Settings
from tests.helpers import job_count

BFL_BODY = {"prompt": "a lighthouse", "width": 256, "height": 256, "steps": 1}
FAL_BODY = {"prompt": "a lighthouse", "image_size": {"width": 256, "height": 256},
            "num_inference_steps": 1}  # fmt: skip
OPENAI_BODY = {"prompt": "a lighthouse", "size": "256x256", "steps": 1}
# Every way to submit: (dialect, path, body). The synchronous ones are only ever refused here
# (with no worker, one that was let in would wait for its job).
SUBMITS = [
    ("bfl", "/v1/flux-dev", BFL_BODY),
    ("fal", "/queue/fal-ai/flux/dev", FAL_BODY),
    ("fal", "/fal-ai/flux/dev", FAL_BODY),
    ("openai", "/v1/images/generations", OPENAI_BODY),
]
# What each refusal is called where a dialect names it: (fal error_type, OpenAI code).
NAMES = {
    401: ("unauthorized", "invalid_api_key"),
    429: ("rate_limited", "rate_limit_exceeded"),
    503: ("server_busy", "server_busy"),
}


def credentials(dialect: str, secret: str) -> dict[str, str]:
    """The header each dialect's clients send a key in."""
    return {
        "bfl": {"x-key": secret},
        "fal": {"Authorization": f"Key {secret}"},
        "openai": {"Authorization": f"Bearer {secret}"},
    }[dialect]


def assert_error(response: httpx.Response, dialect: str, status: int) -> str:
    """Every key of the dialect's error body and the headers that go with ``status``;
    returns the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    fal_type, openai_code = NAMES[status]
    if dialect == "bfl":
        assert set(body) == {"detail", "message"}, body
        assert body["detail"] == body["message"]
        message = body["detail"]
    elif dialect == "fal":
        assert set(body) == {"detail", "error_type"}, body
        assert body["error_type"] == fal_type
        assert response.headers["x-fal-error-type"] == fal_type
        message = body["detail"]
    else:
        assert set(body) == {"error"}, body
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
        assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
        assert error["param"] is None  # no field of the request is at fault
        assert error["code"] == openai_code
        message = error["message"]
    assert isinstance(message, str)
    assert message
    if dialect != "fal":
        assert "x-fal-error-type" not in response.headers
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
        assert "retry-after" not in response.headers
    else:
        assert int(response.headers["retry-after"]) > 0
    return message


@dataclass
class Keyed:
    client: TestClient
    secrets: dict[str, str]


def keyed_app(settings: Settings, **keys: dict) -> Iterator[Keyed]:
    """For a fixture to ``yield from``: keys required, the named keys made with their
    limits, and no worker."""
    settings = settings.model_copy(update={"auth": "required"})
    services = build_services(settings)
    secrets = {name: services.keys.create(name, **limits)[1] for name, limits in keys.items()}
    yield Keyed(TestClient(create_app(settings, services)), secrets)
    services.store.close()


@pytest.fixture
def keyed(settings: Settings) -> Iterator[Keyed]:
    yield from keyed_app(
        settings, alice={}, gone={}, busy={"max_active": 1}, hasty={"rate_per_minute": 1}
    )


def submit(client: TestClient, dialect: str, path: str, body: dict, secret: str | None):
    headers = credentials(dialect, secret) if secret is not None else {}
    return client.post(path, json=body, headers=headers)


# -- 401 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("credential", ["missing", "unknown", "revoked"])
def test_401_on_every_route_kind(keyed, credential):
    client = keyed.client
    queued = client.post(
        "/queue/fal-ai/flux/dev", json=FAL_BODY, headers=credentials("fal", keyed.secrets["alice"])
    )  # fmt: skip
    fal_base = f"/queue/fal-ai/flux/requests/{queued.json()['request_id']}"
    client.app.state.services.keys.revoke("gone")
    secret = {"missing": None, "unknown": "fsk_not-a-key", "revoked": keyed.secrets["gone"]}[
        credential
    ]
    calls = [
        *((dialect, "POST", path, body) for dialect, path, body in SUBMITS),
        ("bfl", "GET", f"/v1/get_result?id={uuid.uuid4()}", None),
        ("bfl", "GET", "/v1/credits", None),
        ("fal", "GET", f"{fal_base}/status", None),
        ("fal", "GET", fal_base, None),
        ("fal", "PUT", f"{fal_base}/cancel", None),
        ("openai", "GET", "/v1/models", None),
    ]
    for dialect, method, path, body in calls:
        headers = credentials(dialect, secret) if secret is not None else {}
        response = client.request(method, path, json=body, headers=headers)
        message = assert_error(response, dialect, 401)
        if credential == "missing":
            assert message.startswith("Not authenticated"), (path, message)
        else:
            assert "unknown or was revoked" in message, (path, message)
    assert job_count(client) == 1  # the one queued with a good key: nothing else got in


# -- 429 ---------------------------------------------------------------------------------------


def test_429_at_the_active_task_limit_on_every_dialect(keyed):
    secret = keyed.secrets["busy"]  # at most 1 queued or running job
    assert submit(keyed.client, *SUBMITS[0], secret).status_code == 200
    for dialect, path, body in SUBMITS:
        refused = submit(keyed.client, dialect, path, body, secret)
        message = assert_error(refused, dialect, 429)
        assert "1 active tasks, its limit" in message, (path, message)
    assert submit(keyed.client, *SUBMITS[0], keyed.secrets["alice"]).status_code == 200
    assert job_count(keyed.client) == 2


def test_429_at_the_request_rate_on_every_dialect(keyed):
    secret = keyed.secrets["hasty"]  # 1 submit a minute
    assert submit(keyed.client, *SUBMITS[1], secret).status_code == 200
    for dialect, path, body in SUBMITS:
        refused = submit(keyed.client, dialect, path, body, secret)
        message = assert_error(refused, dialect, 429)
        assert "1 requests a minute" in message, (path, message)
        assert int(refused.headers["retry-after"]) <= 60  # a token comes back within a minute
    assert job_count(keyed.client) == 1


# -- 503 ---------------------------------------------------------------------------------------


def test_503_when_the_queue_is_full_on_every_dialect(settings):
    settings = settings.model_copy(update={"max_queue": 1})
    app = create_app(settings)
    client = TestClient(app)
    try:
        assert submit(client, *SUBMITS[0], None).status_code == 200
        for dialect, path, body in SUBMITS:
            refused = submit(client, dialect, path, body, None)
            message = assert_error(refused, dialect, 503)
            assert "queue is full (1 jobs)" in message, (path, message)
        assert job_count(client) == 1
    finally:
        app.state.services.store.close()
