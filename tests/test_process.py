"""The real `fluxserve serve` process, driven over HTTP like a BFL client would."""

from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.helpers import LiveServer

pytestmark = pytest.mark.process

SLOW = {"width": 768, "height": 768, "steps": 28}  # ~1.5 s on 2 CPU cores with tiny


class Server(LiveServer):
    """`fluxserve serve --model MODEL`, which a test can poll, submit to, crash or stop."""

    def __init__(self, model: str, data_dir: Path, log: Path) -> None:
        self.data_dir = data_dir
        args = ["--model", model, "--data-dir", str(data_dir), "--lease-seconds", "10"]
        super().__init__(args, log)

    def poll(self, url: str, until, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.http.get(url).json()
            if until(body):
                return body
            time.sleep(0.02)
        raise AssertionError(f"condition not met; last body {body}")

    def submit(self, **fields) -> dict:
        response = self.http.post("/v1/flux-dev", json={"prompt": "a fox", **fields})
        assert response.status_code == 200, response.text
        return response.json()

    def crash(self) -> None:
        self.kill()
        self.close()

    def stop(self) -> None:
        """Ctrl-C; the server and its workers must exit cleanly, promptly."""
        code = super().stop()
        assert code is not None, "the server did not stop within 30 s of SIGINT"
        assert code == 0, f"server exited with {code}"


@pytest.fixture
def servers(tmp_path):
    started: list[Server] = []

    def start(model: str) -> Server:
        server = Server(model, tmp_path / "data", tmp_path / "server.log")
        started.append(server)
        return server

    yield start
    for server in started:
        if not server.log.closed:
            server.stop()


def is_done(body: dict) -> bool:
    return body["status"] != "Pending"


def is_running(body: dict) -> bool:
    return body["status"] == "Pending" and body["progress"] > 0


def test_serve_tiny_over_http(servers):
    server = servers("tiny")
    server.wait_ready()
    assert server.http.get("/healthz").json() == {"status": "ok"}
    submitted = server.submit(width=256, height=256, seed=11)
    assert submitted["polling_url"].startswith(server.base + "/v1/get_result?id=")
    body = server.poll(submitted["polling_url"], is_done)
    assert body["status"] == "Ready", body
    assert body["result"]["seed"] == 11
    image = server.http.get(body["result"]["sample"])
    assert image.status_code == 200
    assert Image.open(io.BytesIO(image.content)).format == "JPEG"
    server.stop()
    assert server.proc.returncode == 0


def test_jobs_survive_a_crash_and_restart(servers, tiny_model_dir):
    server = servers(str(tiny_model_dir))
    server.wait_ready()
    running = server.submit(seed=1, **SLOW)
    queued = server.submit(seed=2, width=256, height=256)
    server.poll(running["polling_url"], is_running)
    server.crash()  # server and worker die together, mid-job

    restarted = servers(str(tiny_model_dir))
    restarted.wait_ready()
    for job in (running, queued):
        body = restarted.poll(f"/v1/get_result?id={job['id']}", is_done)
        assert body["status"] == "Ready", body


def test_job_that_kills_its_worker_twice_ends_as_error(servers, tiny_model_dir):
    server = servers(str(tiny_model_dir))
    server.wait_ready()
    killer = server.submit(seed=3, **SLOW)
    for _ in range(2):
        worker_id = server.wait_ready()["workers"][0]["worker_id"]
        server.poll(killer["polling_url"], is_running)
        os.kill(int(worker_id.rsplit("-", 1)[1]), signal.SIGKILL)  # as the OOM killer would
        server.poll("/readyz", lambda body, old=worker_id: body["workers"][0]["worker_id"] != old)

    body = server.poll(killer["polling_url"], is_done)
    assert body["status"] == "Error"
    assert body["details"]["code"] == "worker_lost"
    # The server and a fresh worker carry on with the next job.
    server.wait_ready()
    after = server.submit(seed=4, width=256, height=256)
    assert server.poll(after["polling_url"], is_done)["status"] == "Ready"


def test_killed_idle_worker_is_replaced_and_serves(servers, tiny_model_dir):
    """A worker killed while it waits for work must not wedge the wake-up of the next."""
    server = servers(str(tiny_model_dir))
    worker_id = server.wait_ready()["workers"][0]["worker_id"]
    os.kill(int(worker_id.rsplit("-", 1)[1]), signal.SIGKILL)
    server.poll("/readyz", lambda body: body["workers"][0]["worker_id"] != worker_id)
    server.wait_ready()
    submitted = server.submit(seed=5, width=256, height=256)
    assert server.poll(submitted["polling_url"], is_done)["status"] == "Ready"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/fal-ai/flux/dev", {"prompt": "x", "image_size": "square_hd", "num_inference_steps": 50}),
        ("/v1/images/generations", {"prompt": "x", "size": "1024x1024", "steps": 50}),
    ],
)
def test_sync_call_whose_client_leaves_is_cancelled(servers, tiny_model_dir, path, body):
    """Nobody would receive the images, and a client's retry must not double the work."""
    import sqlite3

    server = servers(str(tiny_model_dir))
    server.wait_ready()
    with pytest.raises(httpx.ReadTimeout):
        server.http.post(path, json=body, timeout=1.5)
    database = sqlite3.connect(server.data_dir / "jobs.sqlite3")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        (status,) = database.execute("SELECT status FROM jobs").fetchone()
        if status not in ("queued", "running"):
            break
        time.sleep(0.1)
    database.close()
    assert status == "cancelled"
