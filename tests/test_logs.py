"""--log-format json: one JSON object per line, with the job_id of lines about a job, in the
server and in its worker processes."""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import time

import httpx
import pytest

from fluxserve.domain import GenerationRequest, Job, JobStatus
from fluxserve.engine.signals import Flag, Wakeup
from fluxserve.engine.worker import Worker, WorkerOptions
from fluxserve.logs import job_context, make_handler
from fluxserve.runtime.diffusers_runner import FluxRunner
from fluxserve.storage.local import LocalStorage
from fluxserve.store.sqlite import SqliteJobStore
from fluxserve.weights import resolve_model
from tests.helpers import FLUXSERVE, SMALL, free_port


@pytest.fixture
def json_lines():
    """Records of every logger at INFO and above, as the JSON handler writes them."""
    stream = io.StringIO()
    handler = make_handler("json", stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)

    def lines() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def test_a_line_is_one_json_object_with_the_job_of_its_context(json_lines):
    log = logging.getLogger("fluxserve.test")
    with job_context("job-1"):
        log.info("working on it: %d%%", 50)
        log.warning("about another", extra={"job_id": "job-2"})
    log.info("between jobs\nwith a newline")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    inside, other, between, failed = json_lines()
    assert inside["message"] == "working on it: 50%"
    assert inside["job_id"] == "job-1"
    assert inside["level"] == "INFO"
    assert inside["logger"] == "fluxserve.test"
    assert inside["time"].endswith("Z")
    assert other["job_id"] == "job-2"
    assert "job_id" not in between
    assert between["message"] == "between jobs\nwith a newline"
    assert failed["level"] == "ERROR"
    assert "ValueError: boom" in failed["exception"]


def test_the_workers_job_lines_carry_the_job_id(json_lines, tmp_path, tiny_model_dir):
    runner = FluxRunner([resolve_model(str(tiny_model_dir), tiny_model_dir.parent)])
    runner.load()
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    try:
        storage = LocalStorage(tmp_path / "blobs", tmp_path / "secret")
        request = GenerationRequest(
            model=runner.name, prompt="a fox", width=256, height=256, steps=2, guidance=3.0,
            seed=1,
        )  # fmt: skip
        store.create(Job(id="job-a", request=request))
        worker = Worker(store, storage, runner, WorkerOptions("w"), Wakeup(), Flag())
        assert worker.run_once()
        assert store.get("job-a").status is JobStatus.SUCCEEDED
    finally:
        store.close()
    (done,) = [line for line in json_lines() if line["message"].startswith("job job-a done")]
    assert done["job_id"] == "job-a"
    assert done["logger"] == "fluxserve.engine.worker"


@pytest.mark.process
def test_serve_and_its_worker_process_log_json(tmp_path, tiny_model_dir):
    port = free_port()
    log_path = tmp_path / "server.log"
    args = [FLUXSERVE, "serve", "--model", str(tiny_model_dir), "--data-dir", str(tmp_path / "d"),
            "--port", str(port), "--log-format", "json"]  # fmt: skip
    with log_path.open("wb") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
        deadline = time.monotonic() + 120
        job_id = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if job_id is None and http.get("/readyz").status_code == 200:
                    response = http.post("/v1/flux-dev", json={"prompt": "a fox", **SMALL})
                    job_id = response.json()["id"]
                elif job_id is not None:
                    body = http.get("/v1/get_result", params={"id": job_id}).json()
                    if body["status"] != "Pending":
                        assert body["status"] == "Ready", body
                        break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        else:
            raise AssertionError(f"no finished job; log:\n{log_path.read_text()}")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    text = log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    (done,) = [line for line in lines if line["message"].startswith(f"job {job_id} done")]
    assert done["job_id"] == job_id
    assert done["process"] == "fluxserve-worker"  # the worker process logs JSON too
    assert any(line["logger"].startswith("uvicorn") for line in lines)  # uvicorn's too
