"""No job waits for ever: queued jobs for a model no live worker serves end Error, and an
API replica without --model routes to the models its cluster's workers serve."""

from __future__ import annotations

import time
import uuid

from fluxserve.config import Settings
from fluxserve.domain import GenerationRequest, Job, JobStatus
from fluxserve.engine.unserved import UnservedJobs
from tests.helpers import SMALL, idle_app, poll_result, wait_for

TIMEOUT = 600.0


def queue(sqlite_store, model: str, created_at: float) -> Job:
    request = GenerationRequest(model=model, prompt="p", width=64, height=64, steps=1,
                                guidance=None, seed=1)  # fmt: skip
    return sqlite_store.create(Job(id=str(uuid.uuid4()), request=request, created_at=created_at))


def test_jobs_for_an_unserved_model_end_after_the_timeout(sqlite_store):
    t0 = 1_000_000.0
    old = queue(sqlite_store, "ghost", t0 - 10)
    sweep = UnservedJobs(sqlite_store, TIMEOUT, lease_seconds=30)
    assert sweep.sweep(now=t0) == []  # first seen unserved now: the clock starts
    assert sweep.sweep(now=t0 + TIMEOUT - 1) == []
    young = queue(sqlite_store, "ghost", t0 + TIMEOUT - 1)
    ended = sweep.sweep(now=t0 + TIMEOUT + 1)
    assert [job.id for job in ended] == [old.id]  # the young job gets its own full wait
    failed = sqlite_store.get(old.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error_code == "model_unavailable"
    assert "ghost" in failed.error_message
    assert "--unserved-timeout" in failed.error_message
    assert sqlite_store.get(young.id).status is JobStatus.QUEUED
    assert [j.id for j in sweep.sweep(now=t0 + 2 * TIMEOUT)] == [young.id]


def test_a_live_worker_keeps_its_models_jobs_waiting(sqlite_store):
    t0 = 1_000_000.0
    job = queue(sqlite_store, "busy", t0 - 2 * TIMEOUT)
    sqlite_store.register_worker("host-1", "host", ["busy"], "cuda", now=t0)
    sweep = UnservedJobs(sqlite_store, TIMEOUT, lease_seconds=30)
    for later in (0, TIMEOUT, 2 * TIMEOUT):
        sqlite_store.worker_heartbeat("host-1", None, now=t0 + later)
        assert sweep.sweep(now=t0 + later) == []
    assert sqlite_store.get(job.id).status is JobStatus.QUEUED
    # The worker falls silent (stale after three leases): the clock starts then.
    assert sweep.sweep(now=t0 + 2 * TIMEOUT + 100) == []
    assert [j.id for j in sweep.sweep(now=t0 + 3 * TIMEOUT + 101)] == [job.id]


def test_a_loading_local_worker_counts_as_serving(sqlite_store):
    t0 = 1_000_000.0
    job = queue(sqlite_store, "loading", t0 - 2 * TIMEOUT)
    sweep = UnservedJobs(sqlite_store, TIMEOUT, 30, local_models=lambda: {"loading"})
    assert sweep.sweep(now=t0) == sweep.sweep(now=t0 + 2 * TIMEOUT) == []
    assert sqlite_store.get(job.id).status is JobStatus.QUEUED


def test_a_server_ends_a_leftover_job_for_a_model_it_does_not_load(client, settings):
    """A job queued under an earlier --model, found by a server that serves only tiny."""
    services = client.app.state.services
    services.workers.unserved.timeout = 0.5  # as --unserved-timeout 0.5 would
    job = queue(services.store, "flux-dev-from-before", time.time())
    body = poll_result(client, job.id, timeout=30)
    assert body["status"] == "Error"
    assert body["details"]["code"] == "model_unavailable"
    assert "flux-dev-from-before" in body["details"]["message"]


def replica_settings(tmp_path, pg_url, **extra) -> Settings:
    return Settings(data_dir=tmp_path / "data", database=pg_url, worker=False, **extra)


def test_a_replica_without_model_routes_to_what_live_workers_serve(tmp_path, pg_url):
    replica = next(idle_app(replica_settings(tmp_path, pg_url)))
    sqlite_store = replica.app.state.services.store
    submit = lambda: replica.post("/v1/flux-dev", json={"prompt": "a fox", **SMALL})  # noqa: E731
    refused = submit()
    assert refused.status_code == 404
    assert "no live worker" in refused.text.lower()

    sqlite_store.register_worker("gpu-1", "gpu", ["tiny"], "cuda")  # a worker of tiny comes up
    accepted = wait_for(lambda: (r := submit()).status_code == 200 and r, "routing to tiny", 10)
    assert sqlite_store.get(accepted.json()["id"]).model == "tiny"
    listed = replica.get("/v1/models").json()["data"]
    assert [m["id"] for m in listed] == ["tiny"]

    sqlite_store.register_worker("gpu-1", "gpu", ["tiny"], "cuda", now=time.time() - 3600)  # silent
    wait_for(lambda: submit().status_code == 404, "the stale worker's model dropped", 10)
    sqlite_store.close()


def test_a_replica_with_model_keeps_it_as_an_allow_list(tmp_path, pg_url):
    replica = next(idle_app(replica_settings(tmp_path, pg_url, model=["tiny"])))
    sqlite_store = replica.app.state.services.store
    sqlite_store.register_worker("gpu-1", "gpu", ["flux-schnell"], "cuda")
    # flux-schnell is served, but this replica was told tiny only.
    assert replica.post("/v1/flux-schnell", json={"prompt": "a fox"}).status_code == 200
    assert sqlite_store.queued_counts() == {"tiny": 1}
    sqlite_store.close()
