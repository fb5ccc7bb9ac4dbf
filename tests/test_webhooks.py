"""Webhooks: BFL's webhook_url / webhook_secret and fal's ?fal_webhook=, delivered to a real
HTTP receiver on loopback, with retries, the address guard and cluster-safe claims.

Retry delays and the poll interval are shrunk for the tests (no long sleeps; the shipped
schedule is checked, unpatched, in test_readme_promises.py); every wait is "until it
happens, or fail after a generous deadline", never a timed assertion.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from fluxserve.addresses import UrlPolicy
from fluxserve.api.app import create_app
from fluxserve.config import Settings
from fluxserve.domain import GenerationRequest, Job, JobStatus, Webhook
from fluxserve.jobs import webhooks
from fluxserve.jobs.webhooks import WebhookDispatcher, retry_delay, url_problem
from tests.helpers import (
    SMALL,
    fetch_image,
    free_port,
    job_count,
    poll_result,
    wait_for,
    wait_ready,
)

FAST = {**SMALL, "steps": 1, "seed": 3}
FAL_FAST = {"prompt": "a fox", "image_size": {"width": 256, "height": 256},
            "num_inference_steps": 1, "seed": 3}  # fmt: skip
BLOCKED_PROMPT = "child porn in a park"  # on the default term list
DEADLINE = 30.0  # seconds a test waits for something that should take well under one


@pytest.fixture(autouse=True)
def _quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhooks, "RETRY_DELAYS", (0.05, 0.1))
    monkeypatch.setattr(webhooks, "POLL_INTERVAL", 0.02)


# -- the receiver ----------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict


@dataclass
class Receiver:
    """A loopback HTTP server that records every POST and answers from a script."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)  # answers in turn; then 200
    location: str | None = None  # sent with every 3xx answer
    hold: threading.Event | None = None  # when set up: each POST waits for it (slow)
    condition: threading.Condition = field(default_factory=threading.Condition)

    def wait_for(self, count: int, timeout: float = DEADLINE) -> list[Received]:
        with self.condition:
            if not self.condition.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"{len(self.requests)} webhook(s) received, not {count}")
            return list(self.requests)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            length = int(self.headers.get("content-length", 0))
            body = json.loads(self.rfile.read(length))
            with state.condition:
                state.requests.append(Received(self.path, dict(self.headers), body))
                status = state.statuses.pop(0) if state.statuses else 200
                state.condition.notify_all()
            if state.hold is not None:
                state.hold.wait(DEADLINE)
            self.send_response(status)
            if 300 <= status < 400 and state.location is not None:
                self.send_header("location", state.location)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    if state.hold is not None:
        state.hold.set()
    server.shutdown()
    server.server_close()


# -- the server ------------------------------------------------------------------------------


def make_settings(tmp_path: Path, tiny_model_dir: Path, **overrides) -> Settings:
    values = {
        "model": [str(tiny_model_dir)],
        "data_dir": tmp_path / "data",
        "worker_mode": "thread",
        "allow_private_urls": True,  # the receiver is on loopback
        "webhook_timeout": 2.0,
        "webhook_retry_window": 600.0,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def serve(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Callable[..., TestClient]]:
    """Start the app (with a worker and the webhook dispatcher) under settings overrides."""
    clients: list[TestClient] = []

    def start(**overrides) -> TestClient:
        client = TestClient(create_app(make_settings(tmp_path, tiny_model_dir, **overrides)))
        client.__enter__()
        clients.append(client)
        wait_ready(client)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


def settled(client: TestClient, job_id: str, timeout: float = DEADLINE) -> Job:
    """The job once its webhook is no longer pending (delivered or failed)."""
    store = client.app.state.services.store
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get(job_id)
        if job is not None and job.webhook_state != "pending":
            return job
        time.sleep(0.01)
    job = store.get(job_id)
    raise AssertionError(f"webhook of {job_id} still pending: {job and job.webhook_error}")


def bfl_submit(client: TestClient, **body) -> dict:
    response = client.post("/v1/flux-dev", json={"prompt": "a red fox", **FAST, **body})
    assert response.status_code == 200, response.text
    return response.json()


# -- BFL -------------------------------------------------------------------------------------


def test_bfl_webhook_is_posted_once_with_the_secret_and_the_result(serve, receiver):
    client = serve()
    submitted = bfl_submit(
        client, webhook_url=f"{receiver.url}/hooks/bfl?tenant=7", webhook_secret="s3cret"
    )
    job_id = submitted["id"]
    assert submitted["webhook_url"] == f"{receiver.url}/hooks/bfl?tenant=7"
    assert submitted["status"] == "Pending"
    assert submitted["polling_url"].endswith(f"/v1/get_result?id={job_id}")

    job = settled(client, job_id)
    assert (job.webhook_state, job.webhook_attempts, job.webhook_error) == ("delivered", 1, None)
    time.sleep(0.2)  # ten poll intervals: a second delivery would have happened by now
    (hook,) = receiver.wait_for(1)
    assert hook.path == "/hooks/bfl?tenant=7"
    assert hook.headers["X-Webhook-Secret"] == "s3cret"
    assert hook.headers["Content-Type"] == "application/json"
    assert hook.headers["User-Agent"] == f"fluxserve/{version('fluxserve')} (webhook)"
    body = hook.body
    assert body["id"] == body["task_id"] == job_id
    assert (body["status"], body["error"]) == ("SUCCESS", None)

    polled = poll_result(client, job_id)
    assert polled["status"] == "Ready"
    # The result object get_result has, but for the freshly signed sample URL.
    assert set(body["result"]) == set(polled["result"])
    for name in set(polled["result"]) - {"sample"}:
        assert body["result"][name] == polled["result"][name], name
    assert body["result"]["seed"] == 3
    assert fetch_image(client, body["result"]["sample"]).size == (256, 256)
    # fluxserve's extension in details: how the delivery went.
    assert polled["details"]["webhook"] == {"state": "delivered", "attempts": 1, "error": None}


def test_without_a_webhook_the_submit_answer_is_unchanged(serve):
    client = serve()
    submitted = bfl_submit(client)
    assert set(submitted) == {"id", "polling_url", "cost", "input_mp", "output_mp"}
    assert client.app.state.services.store.get(submitted["id"]).webhook_state is None
    assert poll_result(client, submitted["id"])["details"] is None


def test_no_secret_no_secret_header(serve, receiver):
    client = serve()
    job_id = bfl_submit(client, webhook_url=f"{receiver.url}/plain")["id"]
    assert settled(client, job_id).webhook_state == "delivered"
    (hook,) = receiver.wait_for(1)
    assert "X-Webhook-Secret" not in hook.headers


def test_server_errors_are_retried_until_delivered(serve, receiver):
    receiver.statuses = [500, 503]
    client = serve()
    job_id = bfl_submit(client, webhook_url=f"{receiver.url}/flaky")["id"]
    job = settled(client, job_id)
    assert (job.webhook_state, job.webhook_attempts) == ("delivered", 3)
    hooks = receiver.wait_for(3)
    assert len(hooks) == 3
    assert {hook.body["id"] for hook in hooks} == {job_id}


def test_a_client_error_is_not_retried(serve, receiver):
    receiver.statuses = [404]
    client = serve()
    job_id = bfl_submit(client, webhook_url=f"{receiver.url}/gone")["id"]
    job = settled(client, job_id)
    assert (job.webhook_state, job.webhook_attempts) == ("failed", 1)
    assert "HTTP 404" in job.webhook_error


@pytest.mark.parametrize("status", [408, 425, 429])
def test_timeout_too_early_and_too_many_requests_are_retried(serve, receiver, status):
    receiver.statuses = [status, status]
    client = serve()
    job_id = bfl_submit(client, webhook_url=f"{receiver.url}/busy")["id"]
    job = settled(client, job_id)
    assert (job.webhook_state, job.webhook_attempts, job.webhook_error) == ("delivered", 3, None)
    assert [hook.path for hook in receiver.wait_for(3)] == ["/busy"] * 3


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_a_redirect_is_not_followed_and_fails_at_once(serve, receiver, status):
    receiver.statuses = [status]
    receiver.location = f"{receiver.url}/elsewhere"
    client = serve()
    job_id = bfl_submit(client, webhook_url=f"{receiver.url}/moved")["id"]
    job = settled(client, job_id)
    assert (job.webhook_state, job.webhook_attempts) == ("failed", 1)
    assert f"HTTP {status} (redirects are not followed)" in job.webhook_error
    # A followed redirect would have been made within that one attempt, before it settled.
    assert [hook.path for hook in receiver.requests] == ["/moved"]


def test_a_dead_receiver_is_retried_while_generation_goes_on(serve):
    client = serve()
    dead = f"http://127.0.0.1:{free_port()}/nobody-listens"
    job_id = bfl_submit(client, webhook_url=dead)["id"]
    # Generation goes on meanwhile.
    other = bfl_submit(client, prompt="a lighthouse")["id"]
    assert poll_result(client, other)["status"] == "Ready"
    store = client.app.state.services.store
    job = wait_for(lambda: (j := store.get(job_id)).webhook_attempts >= 3 and j,
                   "the dead receiver's third attempt", DEADLINE)  # fmt: skip
    assert job.webhook_state == "pending"  # within the retry window: tried again later
    assert "ConnectError" in job.webhook_error
    polled = poll_result(client, job_id)
    assert polled["status"] == "Ready"  # the job itself is fine
    assert polled["details"]["webhook"]["state"] == "pending"


def test_a_failing_delivery_gives_up_once_the_retry_window_has_passed(tmp_path):
    """The window counts from the task's end: a task that ended 40 s ago, with a 60 s
    window, is tried again after 1 s and 5 s (within it) but not after 30 s (past it)."""
    from fluxserve.store.sqlite import SqliteJobStore

    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    try:
        job = ended_job(f"http://127.0.0.1:{free_port()}/nobody-listens")
        job.finished_at = time.time() - 40
        store.create(job)
        dispatcher = WebhookDispatcher(store, lambda job: {"id": job.id},
                                       UrlPolicy(allow_private=True), timeout=2.0,
                                       retry_window=60.0, delays=(1.0, 5.0, 30.0))  # fmt: skip
        for attempt, state in [(1, "pending"), (2, "pending"), (3, "failed")]:
            # Claim the delivery now, whenever its next try was due.
            (claimed,) = store.due_webhooks(time.time() + 3600, 1, dispatcher.hold_seconds)
            assert claimed.webhook_attempts == attempt
            dispatcher.deliver(claimed)
            after = store.get(job.id)
            assert (after.webhook_state, after.webhook_attempts) == (state, attempt)
            assert "ConnectError" in after.webhook_error  # the last error, kept
        assert store.due_webhooks(time.time() + 3600, 1, dispatcher.hold_seconds) == []
    finally:
        store.close()


def test_a_slow_receiver_holds_up_neither_generation_nor_other_webhooks(serve, receiver):
    receiver.hold = threading.Event()  # every POST to it hangs until the test ends
    client = serve(webhook_timeout=0.3, webhook_retry_window=0.0)
    stuck = bfl_submit(client, webhook_url=f"{receiver.url}/slow")["id"]
    receiver.wait_for(1)  # the dispatcher is now waiting on the slow receiver

    # A job generates and its webhook (to a receiver that answers) is delivered while the
    # slow receiver still holds its request.
    fast_requests: list[dict] = []

    class Fast(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            fast_requests.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    fast_server = ThreadingHTTPServer(("127.0.0.1", 0), Fast)
    threading.Thread(target=fast_server.serve_forever, daemon=True).start()
    try:
        fast_url = f"http://127.0.0.1:{fast_server.server_address[1]}/fast"
        quick = bfl_submit(client, webhook_url=fast_url)["id"]
        assert poll_result(client, quick)["status"] == "Ready"
        assert settled(client, quick).webhook_state == "delivered"
        assert not receiver.hold.is_set()  # the slow receiver has not answered yet
        assert [body["id"] for body in fast_requests] == [quick]
    finally:
        fast_server.shutdown()
        fast_server.server_close()
    job = settled(client, stuck)
    assert job.webhook_state == "failed"
    assert "no answer within 0.3 s" in job.webhook_error


def test_a_loopback_receiver_is_refused_without_allow_private_urls(serve, receiver):
    client = serve(allow_private_urls=False)
    job_id = bfl_submit(client, webhook_url=f"{receiver.url}/internal")["id"]
    job = settled(client, job_id)
    assert (job.webhook_state, job.webhook_attempts) == ("failed", 1)  # no retries
    assert "address policy" in job.webhook_error
    assert "loopback" in job.webhook_error
    assert receiver.requests == []


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/hook", "must be an http(s) URL"),
        ("example.com/hook", "must be an http(s) URL"),
        ("http:///hook", "must name a host"),
        ("http://example.com:99999/hook", "not a valid URL"),
        ("http://user:pw@example.com/hook", "user name or password"),
        ("http://example.com/a hook", "spaces"),
    ],
)
def test_bad_webhook_urls_are_422_naming_the_field(idle_client, url, message):
    before = job_count(idle_client)
    response = idle_client.post("/v1/flux-dev", json={"prompt": "x", **FAST, "webhook_url": url})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "webhook_url"]
    assert message in error["msg"]
    assert job_count(idle_client) == before


def test_bfl_moderated_job_is_announced_failed(serve, receiver):
    client = serve()
    job_id = bfl_submit(client, prompt=BLOCKED_PROMPT, webhook_url=f"{receiver.url}/m")["id"]
    assert settled(client, job_id).webhook_state == "delivered"
    (hook,) = receiver.wait_for(1)
    assert hook.body["id"] == hook.body["task_id"] == job_id
    assert hook.body["status"] == "FAILED"
    assert hook.body["result"] is None
    assert "child porn" in hook.body["error"]
    assert hook.body["details"]["code"] == "request_moderated"


# -- fal -------------------------------------------------------------------------------------


def fal_submit(client: TestClient, webhook: str, **body) -> dict:
    response = client.post(
        f"/queue/fal-ai/flux/dev?fal_webhook={quote(webhook, safe='')}",
        json={**FAL_FAST, **body},
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_fal_webhook_carries_the_result_body(serve, receiver):
    client = serve()
    submitted = fal_submit(client, f"{receiver.url}/fal?x=1&y=2")
    request_id = submitted["request_id"]
    assert submitted["gateway_request_id"] == request_id
    assert settled(client, request_id).webhook_state == "delivered"
    (hook,) = receiver.wait_for(1)
    assert hook.path == "/fal?x=1&y=2"
    assert "X-Webhook-Secret" not in hook.headers
    body = hook.body
    assert body["request_id"] == body["gateway_request_id"] == request_id
    assert (body["status"], body["error"]) == ("OK", None)
    result = client.get(f"/queue/fal-ai/flux/requests/{request_id}").json()
    payload = body["payload"]
    assert set(payload) == set(result)
    assert payload["seed"] == result["seed"] == 3
    assert payload["prompt"] == result["prompt"]
    (image,) = payload["images"]
    assert (image["width"], image["height"]) == (256, 256)
    assert fetch_image(client, image["url"]).size == (256, 256)


def test_fal_queue_submit_without_webhook_has_no_gateway_id(serve):
    client = serve()
    response = client.post("/queue/fal-ai/flux/dev", json=FAL_FAST)
    assert "gateway_request_id" not in response.json()


def test_fal_refused_request_is_announced_as_error(serve, receiver):
    client = serve()
    request_id = fal_submit(client, f"{receiver.url}/fal", prompt=BLOCKED_PROMPT)["request_id"]
    assert settled(client, request_id).webhook_state == "delivered"
    (hook,) = receiver.wait_for(1)
    body = hook.body
    assert body["request_id"] == body["gateway_request_id"] == request_id
    assert body["status"] == "ERROR"
    assert body["error"] == "Invalid status code: 422"
    assert body["payload"]["error_type"] == "content_policy_violation"
    assert "child porn" in body["payload"]["detail"]


@pytest.mark.parametrize("url", ["ftp://example.com/x", "not a url", "http://"])
def test_fal_bad_webhook_is_422_naming_the_parameter(idle_client, url):
    before = job_count(idle_client)
    response = idle_client.post(
        f"/queue/fal-ai/flux/dev?fal_webhook={quote(url, safe='')}", json=FAL_FAST
    )
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", "fal_webhook"]
    assert job_count(idle_client) == before


# -- the dispatcher on its own ---------------------------------------------------------------


def ended_job(url: str) -> Job:
    request = GenerationRequest(model="tiny", prompt="p", width=256, height=256, steps=1,
                                guidance=None, seed=1)  # fmt: skip
    now = time.time()
    return Job(id=str(uuid.uuid4()), request=request, status=JobStatus.SUCCEEDED,
               created_at=now, finished_at=now, webhook=Webhook(url, "bfl"))  # fmt: skip


def deliver_with_two_dispatchers(stores: list, receiver: Receiver, count: int = 30) -> None:
    """Two dispatchers, each on its own connection to one job table (two API replicas),
    deliver ``count`` webhooks: each exactly once."""
    receiver.statuses = []
    ids = [stores[0].create(ended_job(f"{receiver.url}/c")).id for _ in range(count)]
    dispatchers = [
        WebhookDispatcher(
            store,
            lambda job: {"id": job.id},
            UrlPolicy(allow_private=True),
            timeout=5.0,
            poll_interval=0.001,
            concurrency=4,
        )  # fmt: skip
        for store in stores
    ]
    for dispatcher in dispatchers:
        dispatcher.start()
    try:
        hooks = receiver.wait_for(count)
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            states = {stores[0].get(job_id).webhook_state for job_id in ids}
            if states == {"delivered"}:
                break
            time.sleep(0.01)
        assert states == {"delivered"}
        time.sleep(0.1)  # a hundred poll intervals: any duplicate would have been sent
    finally:
        for dispatcher in dispatchers:
            dispatcher.stop()
    delivered = [hook.body["id"] for hook in receiver.requests]
    assert sorted(delivered) == sorted(ids), "each webhook once"
    assert len(hooks) == count
    assert {stores[0].get(job_id).webhook_attempts for job_id in ids} == {1}


def test_two_dispatchers_on_sqlite_deliver_each_webhook_once(tmp_path, receiver):
    from fluxserve.store.sqlite import SqliteJobStore

    stores = [SqliteJobStore(tmp_path / "jobs.sqlite3") for _ in range(2)]
    try:
        deliver_with_two_dispatchers(stores, receiver)
    finally:
        for store in stores:
            store.close()


def test_two_dispatchers_on_postgres_deliver_each_webhook_once(pg_url, receiver):
    from fluxserve.store.postgres import PostgresJobStore

    stores = [PostgresJobStore(pg_url), PostgresJobStore(pg_url, migrate=False)]
    try:
        deliver_with_two_dispatchers(stores, receiver)
    finally:
        for store in stores:
            store.close()


def test_a_claim_holds_the_delivery_and_record_is_fenced(tmp_path):
    from fluxserve.store.sqlite import SqliteJobStore

    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    try:
        job = store.create(ended_job("http://example.com/h"))
        queued = store.create(
            Job(
                id="00000000-0000-4000-8000-000000000001",
                request=job.request,
                webhook=Webhook("http://example.com/h", "bfl"),
            )  # fmt: skip
        )
        now = time.time()
        (claimed,) = store.due_webhooks(now, 10, hold_seconds=60)
        assert (claimed.id, claimed.webhook_attempts) == (job.id, 1)
        assert store.due_webhooks(now + 59, 10, hold_seconds=60) == []  # held, and queued
        (again,) = store.due_webhooks(now + 61, 10, hold_seconds=60)  # the holder died
        assert again.webhook_attempts == 2
        assert not store.record_webhook(job.id, 1, "delivered", None, None)  # stale attempt
        assert store.record_webhook(job.id, 2, "pending", now + 100, "HTTP 500")
        assert store.due_webhooks(now + 99, 10, hold_seconds=60) == []
        assert store.get(job.id).webhook_error == "HTTP 500"
        assert store.get(queued.id).webhook_state == "pending"  # not ended: not due
    finally:
        store.close()


def test_the_post_goes_to_the_checked_address_with_the_original_host(receiver, monkeypatch):
    """DNS rebinding: the receiver's name is resolved once, checked, and that address is
    the one connected to, with the name in the Host header."""
    lookups: list[str] = []

    def resolve(host: str) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"] if len(lookups) == 1 else ["10.0.0.1"]

    monkeypatch.setattr("fluxserve.addresses._resolve", resolve)
    port = receiver.url.rsplit(":", 1)[1]
    outcome = webhooks.post(
        f"http://hooks.invalid:{port}/pinned", b'{"id": "x"}', {"Content-Type": "application/json"},
        UrlPolicy(allowed_addresses=frozenset({"127.0.0.1"})), timeout=5.0,
    )  # fmt: skip
    assert outcome.delivered, outcome
    (hook,) = receiver.wait_for(1)
    assert hook.headers["Host"] == f"hooks.invalid:{port}"
    assert lookups == ["hooks.invalid"]


# -- pure parts ------------------------------------------------------------------------------


def test_retry_delays_back_off_then_repeat():
    delays = (1.0, 5.0, 30.0, 120.0, 600.0)
    assert [retry_delay(n, delays) for n in range(1, 8)] == [1, 5, 30, 120, 600, 600, 600]


@pytest.mark.parametrize(
    "url", ["https://example.com/hook", "http://10.0.0.1:8080/x?y=1", "http://[::1]/h"]
)
def test_good_webhook_urls(url):
    assert url_problem(url) is None


def test_a_receiver_that_trickles_its_answer_is_cut_off_at_the_deadline(monkeypatch):
    """Each read within the timeout, the answer never complete: the attempt still ends."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 10_000:
                if stop.wait(0.1):  # one byte every 0.1 s: each read is quick
                    return
                conn.sendall(bytes([byte]))

    threading.Thread(target=trickle, daemon=True).start()
    monkeypatch.setattr(webhooks, "ATTEMPT_DEADLINE_FACTOR", 2)
    started = time.monotonic()
    outcome = webhooks.post(
        f"http://127.0.0.1:{port}/hook", b"{}", {}, UrlPolicy(allow_private=True), timeout=0.5
    )
    elapsed = time.monotonic() - started
    stop.set()
    listener.close()
    assert not outcome.delivered
    assert outcome.retry
    assert elapsed < 10  # cut off (at about 1 s), not after the 10,000 bytes' 1,000 s


@pytest.mark.parametrize(
    ("secret", "message"),
    [("clé", "printable ASCII"), ("a\r\nX-Evil: 1", "printable ASCII"), ("", "1 to 256")],
)
def test_a_secret_that_cannot_be_a_header_is_422(idle_client, secret, message):
    body = {"prompt": "x", **FAST, "webhook_url": "https://example.com/h", "webhook_secret": secret}
    response = idle_client.post("/v1/flux-dev", json=body)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "webhook_secret"]
    assert message in error["msg"]


def test_an_internationalised_host_is_sent_as_punycode(receiver, monkeypatch):
    monkeypatch.setattr("fluxserve.addresses._resolve", lambda host: ["127.0.0.1"])
    port = receiver.url.rsplit(":", 1)[1]
    outcome = webhooks.post(
        f"http://bücher.example:{port}/hook", b'{"id": "x"}', {},
        UrlPolicy(allowed_addresses=frozenset({"127.0.0.1"})), timeout=5.0,
    )  # fmt: skip
    assert outcome.delivered, outcome
    (hook,) = receiver.wait_for(1)
    assert hook.headers["Host"] == f"xn--bcher-kva.example:{port}"


def test_a_crashing_delivery_is_recorded_not_retried_for_ever(tmp_path, monkeypatch):
    from fluxserve.store.sqlite import SqliteJobStore

    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    job = Job(
        id=str(uuid.uuid4()),
        request=GenerationRequest(
            model="tiny", prompt="p", width=64, height=64, steps=1, guidance=None, seed=1
        ),  # fmt: skip
        webhook=Webhook("https://example.com/h", "bfl"),
    )
    store.create(job)
    claimed = store.claim("w", ["tiny"], 30)
    store.complete(claimed.id, claimed.attempt, [])

    def crash(*_args, **_kwargs):  # stands for a bug: the receiver is never reached
        raise RuntimeError("a bug")

    monkeypatch.setattr(webhooks, "post", crash)
    dispatcher = webhooks.WebhookDispatcher(store, lambda _job: {}, UrlPolicy())
    (due,) = store.due_webhooks(time.time(), 1, dispatcher.hold_seconds)
    dispatcher._deliver_then_release(due)
    settled_job = store.get(job.id)
    assert settled_job.webhook_state == "failed"
    assert "crashed" in settled_job.webhook_error
    assert store.ended_before(time.time() + 1) == [job.id]  # and so it can be purged
    store.close()
