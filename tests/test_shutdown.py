"""Stopping: a bounded shutdown on SIGTERM, workers that die with their server, and a new
server that makes sure no worker of the last one still runs a job before it requeues it."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fluxserve.engine.worker_locks import stop_stale_workers, workers_dir
from tests.helpers import SMALL, LiveServer, wait_for

# Far longer than the graces below: ~20 s on 2 CPU cores with the tiny model.
LONG = {"width": 1440, "height": 1440, "steps": 50}


class Server(LiveServer):
    def __init__(self, model: Path, data_dir: Path, log: Path, *flags: str) -> None:
        self.data_dir = data_dir
        super().__init__(["--model", str(model), "--data-dir", str(data_dir), *flags], log)

    def submit(self, **fields) -> str:
        response = self.http.post("/v1/flux-dev", json={"prompt": "a fox", **fields})
        assert response.status_code == 200, response.text
        return response.json()["id"]

    def result(self, job_id: str) -> dict:
        return self.http.get("/v1/get_result", params={"id": job_id}).json()

    def wait_running(self, job_id: str) -> None:
        wait_for(lambda: self.result(job_id)["progress"] > 0, "the job running", 120)

    def worker_pid(self) -> int:
        worker_id = self.wait_ready()["workers"][0]["worker_id"]
        return int(worker_id.rsplit("-", 1)[1])


@pytest.fixture
def start(tmp_path, tiny_model_dir):
    started: list[Server] = []

    def start(*flags: str) -> Server:
        server = Server(tiny_model_dir, tmp_path / "data", tmp_path / "server.log", *flags)
        started.append(server)
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.kill()
        server.close()


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for its reaper counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def job_row(data_dir: Path, job_id: str) -> tuple[str, int, str]:
    database = sqlite3.connect(data_dir / "jobs.sqlite3")
    try:
        return database.execute(
            "SELECT status, attempt, result_keys FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
    finally:
        database.close()


@pytest.mark.process
def test_sigterm_stops_within_the_grace_and_the_next_server_finishes_the_job(start):
    # --max-attempts 1: the job stopped by the shutdown must not use up its only attempt.
    server = start("--shutdown-grace", "8", "--max-attempts", "1")
    worker = server.worker_pid()
    job_id = server.submit(seed=7, **LONG)
    server.wait_running(job_id)

    server.http.close()  # an idle keep-alive connection is not what is measured here
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(8 + 5)  # the grace, and the interpreter's own exit
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running 13 s after SIGTERM with an 8 s grace:\n{server.log_tail()}")
    took = time.monotonic() - signalled
    assert gone(worker), "the worker outlived its server"
    status, attempt, _ = job_row(server.data_dir, job_id)
    assert (status, attempt) == ("queued", 0), (status, attempt, took)
    assert "back in the queue" in server.log_tail()
    server.close()

    restarted = start("--max-attempts", "1")
    restarted.wait_ready()
    body = wait_for(
        lambda: (b := restarted.result(job_id))["status"] != "Pending" and b, "the job's end", 180
    )
    assert body["status"] == "Ready", body
    assert body["result"]["seed"] == 7


@pytest.mark.process
def test_a_killed_server_leaves_no_worker_and_its_job_runs_once(start):
    server = start()
    worker = server.worker_pid()
    job_id = server.submit(seed=8, width=1024, height=1024, steps=50)  # ~10 s
    server.wait_running(job_id)

    os.kill(server.proc.pid, signal.SIGKILL)  # the server only: its worker is orphaned
    server.proc.wait(10)
    wait_for(lambda: gone(worker), "the orphaned worker's exit", 5)
    server.close()

    restarted = start()
    restarted.wait_ready()
    body = wait_for(
        lambda: (b := restarted.result(job_id))["status"] != "Pending" and b, "the job's end", 180
    )
    assert body["status"] == "Ready", body
    status, attempt, keys = job_row(restarted.data_dir, job_id)
    assert (status, attempt) == ("succeeded", 2)
    stored = list((restarted.data_dir / "blobs" / "results" / job_id).rglob("*.jpeg"))
    assert [p.name for p in stored] == [Path(k).name for k in eval(keys)]  # one image, once


HOLDER = """
import sys, time
from pathlib import Path
from fluxserve.engine.worker_locks import hold_worker_lock
lock = hold_worker_lock(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(600)
"""


def test_a_new_server_kills_a_worker_of_the_last_one_before_requeueing(tmp_path):
    """The check behind the requeue at start: a live holder of a worker lock is killed
    and waited for; a lock file left by a dead worker is only removed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        (workers_dir(tmp_path) / "999999999.lock").write_text("999999999")  # a dead one's
        assert stop_stale_workers(tmp_path) == [holder.pid]
        assert holder.wait(5) == -signal.SIGKILL
        assert list(workers_dir(tmp_path).iterdir()) == []
        assert stop_stale_workers(tmp_path) == []
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.stdout.close()


@pytest.mark.parametrize(
    ("path", "body", "error_field"),
    [
        ("/v1/flux-dev", {"prompt": "a fox", **SMALL}, "detail"),
        ("/fal-ai/flux/dev", {"prompt": "a fox"}, "detail"),
        ("/v1/images/generations", {"prompt": "a fox", "size": "256x256"}, "error"),
    ],
)
def test_a_draining_server_refuses_submits_with_retry_after(idle_client, path, body, error_field):
    services = idle_client.app.state.services
    services.begin_shutdown()
    response = idle_client.post(path, json=body)
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    assert "shutting down" in str(response.json()[error_field])
    assert services.store.queued_counts() == {}
