"""`fluxserve status`: the queue, running jobs and workers, read from SQLite or PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from fluxserve.cli.main import main
from fluxserve.domain import GenerationRequest, Job
from fluxserve.store.postgres import PostgresJobStore
from fluxserve.store.sqlite import SqliteJobStore
from tests.helpers import FLUXSERVE, SMALL, poll_result


def small(model: str, seed: int = 1) -> GenerationRequest:
    return GenerationRequest(
        model=model, prompt="a fox", width=256, height=256, steps=2, guidance=3.0, seed=seed
    )


def fill(store) -> None:
    """Model a: 2 queued and 1 running; model b: 1 queued; a live worker on a GPU and a
    worker silent for an hour."""
    for n, model in enumerate(["a", "a", "a", "b"]):
        store.create(Job(id=f"job-{n}", request=small(model, seed=n)))
    store.claim("gpu-1", ["a"], 30)
    store.register_worker("gpu-1", "node-1", ["a", "b"], "cuda:0")
    store.worker_heartbeat("gpu-1", "job-0", 3 * 2**30, 5 * 2**30)
    store.register_worker("old-1", "node-2", ["b"], "cuda:1", now=time.time() - 3600)


def check_json(data: dict) -> None:
    assert data["queue"] == {"a": {"queued": 2, "running": 1}, "b": {"queued": 1, "running": 0}}
    (running,) = data["running"]
    assert (running["id"], running["model"], running["worker"]) == ("job-0", "a", "gpu-1")
    assert running["batch_size"] == 1
    live, old = data["workers"]
    assert live["id"] == "gpu-1"
    assert live["host"] == "node-1"
    assert live["models"] == ["a", "b"]
    assert live["device"] == "cuda:0"
    assert live["current_job"] == "job-0"
    assert live["gpu_memory_bytes"] == 3 * 2**30
    assert live["gpu_memory_peak_bytes"] == 5 * 2**30
    assert live["stale"] is False
    assert old["id"] == "old-1"
    assert old["stale"] is True


def test_status_of_a_sqlite_data_dir_in_use(tmp_path, capsys):
    # The store stays open, as a running server's would: status only reads beside it.
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    try:
        fill(store)
        assert main(["status", "--data-dir", str(tmp_path)]) == 0
        text = capsys.readouterr().out
        assert main(["status", "--data-dir", str(tmp_path), "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
    finally:
        store.close()
    check_json(data)
    lines = text.splitlines()
    assert lines[0] == "Queue"
    assert lines[1].split() == ["MODEL", "QUEUED", "RUNNING"]
    assert lines[2].split() == ["a", "2", "1"]
    assert lines[3].split() == ["b", "1", "0"]
    assert "Running jobs (1)" in lines
    assert any(line.split()[:3] == ["job-0", "a", "gpu-1"] for line in lines)
    assert "Workers (1 up, 1 stale: silent for over 3 leases)" in lines
    live = next(line for line in lines if line.strip().startswith("gpu-1"))
    assert live.split()[1:5] == ["node-1", "a,b", "cuda:0", "job-0"]
    assert "3.0 GiB (peak 5.0 GiB)" in live
    assert any(line.strip().startswith("old-1 (stale)") for line in lines)


def test_status_of_a_postgres_cluster(pg_url, capsys):
    store = PostgresJobStore(pg_url)
    try:
        fill(store)
        assert main(["status", "--database", pg_url, "--json"]) == 0
    finally:
        store.close()
    check_json(json.loads(capsys.readouterr().out))


def test_status_beside_a_running_server(client, settings):
    """The real server's worker (a thread) is listed with its models, from another process."""
    job_id = client.post("/v1/flux-dev", json={"prompt": "a fox", **SMALL}).json()["id"]
    assert poll_result(client, job_id)["status"] == "Ready"  # so the worker has registered
    result = subprocess.run(
        [FLUXSERVE, "status", "--data-dir", str(settings.data_dir), "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["queue"] == {}
    assert data["running"] == []
    (worker,) = data["workers"]
    assert worker["models"] == ["tiny"]
    assert worker["stale"] is False


def test_empty_store_and_missing_database(tmp_path, capsys):
    SqliteJobStore(tmp_path / "jobs.sqlite3").close()
    assert main(["status", "--data-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "empty: no queued or running jobs" in text
    assert "Workers (0 up)" in text
    assert "none registered" in text

    missing = tmp_path / "nothing-here"
    assert main(["status", "--data-dir", str(missing)]) == 1
    assert "There is no job database at" in capsys.readouterr().err
    assert not missing.exists()  # status creates nothing


@pytest.mark.parametrize("flag", ["--model", "--port"])
def test_status_takes_only_the_store_flags(flag, capsys):
    with pytest.raises(SystemExit):
        main(["status", flag, "x"])
    assert "unrecognized arguments" in capsys.readouterr().err
