"""The workers table: each worker registers, beats on its lease cadence and leaves; on SQLite
and PostgreSQL. And jobs.batch_size, written by the claim and by a batch's worker."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from fluxserve.domain import GenerationRequest, Job, JobStatus
from fluxserve.engine.lease import LeaseKeeper
from fluxserve.engine.signals import Flag, Wakeup
from fluxserve.engine.worker import Worker, WorkerOptions
from fluxserve.runtime.diffusers_runner import FluxRunner
from fluxserve.storage.local import LocalStorage
from fluxserve.store.base import STALE_AFTER_LEASES
from fluxserve.weights import resolve_model
from tests.helpers import wait_for


@pytest.fixture(scope="module")
def runner(tiny_model_dir):
    runner = FluxRunner([resolve_model(str(tiny_model_dir), tiny_model_dir.parent)])
    runner.load()
    return runner


def small(model: str, seed: int = 1) -> GenerationRequest:
    return GenerationRequest(
        model=model, prompt="a fox", width=256, height=256, steps=2, guidance=3.0, seed=seed
    )


# -- the job_store ---------------------------------------------------------------------------------


def test_register_heartbeat_list_and_remove(job_store):
    job_store.register_worker(
        "b-1", "host-b", ["flux-dev", "flux-kontext-dev"], "cuda:0", now=100.0
    )
    job_store.register_worker("a-1", "host-a", ["tiny"], "cpu", now=100.0)
    assert [w.id for w in job_store.list_workers()] == ["a-1", "b-1"]  # by host

    assert job_store.worker_heartbeat("b-1", "job-7", 5 * 2**30, 9 * 2**30, now=110.0)
    record = next(w for w in job_store.list_workers() if w.id == "b-1")
    assert record.host == "host-b"
    assert record.models == ["flux-dev", "flux-kontext-dev"]
    assert record.device == "cuda:0"
    assert (record.started_at, record.last_seen) == (100.0, 110.0)
    assert record.current_job == "job-7"
    assert (record.gpu_memory_bytes, record.gpu_memory_peak_bytes) == (5 * 2**30, 9 * 2**30)
    assert not record.is_stale(lease_seconds=30, now=110.0 + STALE_AFTER_LEASES * 30)
    assert record.is_stale(lease_seconds=30, now=111.0 + STALE_AFTER_LEASES * 30)

    # Registering again (a restart with the same id) starts the row afresh.
    job_store.register_worker("b-1", "host-b", ["flux-dev"], "cuda:0", now=200.0)
    record = next(w for w in job_store.list_workers() if w.id == "b-1")
    assert (record.started_at, record.current_job, record.gpu_memory_bytes) == (200.0, None, None)

    assert job_store.purge_workers(seen_before=150.0) == 1  # a-1, silent since 100
    assert [w.id for w in job_store.list_workers()] == ["b-1"]
    assert not job_store.worker_heartbeat("a-1", None)  # gone: it must register again
    assert job_store.remove_worker("b-1")
    assert not job_store.remove_worker("b-1")
    assert job_store.list_workers() == []


def test_claims_record_batch_sizes(job_store):
    for n in range(3):
        job_store.create(Job(id=f"j{n}", request=small("m", seed=n)))
    (solo,) = job_store.claim_batch("w", ["m"], 30, limit=1)
    assert job_store.get(solo.id).batch_size == 1
    batch = job_store.claim_batch("w", ["m"], 30, limit=2)
    assert job_store.set_batch_size("w", [job.id for job in batch], 2) == 2
    assert job_store.set_batch_size("other-worker", [job.id for job in batch], 5) == 0  # not its
    assert [job_store.get(job.id).batch_size for job in batch] == [2, 2]


def test_active_counts_and_running_jobs(job_store):
    for n, model in enumerate(["a", "a", "a", "b"]):
        job_store.create(Job(id=f"j{n}", request=small(model, seed=n)))
    job_store.claim("w", ["a"], 30)
    assert job_store.active_counts() == {
        "a": {"queued": 2, "running": 1},
        "b": {"queued": 1, "running": 0},
    }
    assert [job.id for job in job_store.running_jobs()] == ["j0"]


# -- the real worker ----------------------------------------------------------------------------


class Observed:
    """The real tiny runner, which says it is on a GPU with fixed memory figures; in the
    middle of each job it beats (as the lease keeper does every third of a lease) and keeps
    the workers table as it is then."""

    device = "cuda:7"

    def __init__(self, runner: FluxRunner, job_store) -> None:
        self.runner, self.store = runner, job_store
        self.name, self.model_names = runner.name, runner.model_names
        self.worker: Worker | None = None
        self.mid_job: list = []

    def load(self) -> None: ...

    def memory_stats(self) -> tuple[int, int]:
        return 123, 456

    def generate(self, request, inputs, on_step, should_stop):
        self.worker.beat()
        self.mid_job.append(self.store.list_workers())
        return self.runner.generate(request, inputs, on_step, should_stop)


def test_worker_registers_beats_and_removes_itself(job_store, runner, tmp_path):
    storage = LocalStorage(tmp_path / "blobs", tmp_path / "secret")
    observed = Observed(runner, job_store)
    wake, stop = Wakeup(), Flag()
    worker = Worker(
        job_store, storage, observed, WorkerOptions("w-1", lease_seconds=30), wake, stop
    )
    observed.worker = worker
    worker.beat()  # before run(): not registered, so no row
    assert job_store.list_workers() == []
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        (record,) = wait_for(job_store.list_workers, "the worker's registration")
        assert record.id == "w-1"
        assert record.host == socket.gethostname()
        assert record.models == runner.model_names
        assert record.device == "cuda:7"
        assert record.current_job is None
        assert record.gpu_memory_bytes is None  # not beaten yet

        job_store.create(Job(id="job-1", request=small(runner.name)))
        wake.set()
        wait_for(lambda: job_store.get("job-1").status is JobStatus.SUCCEEDED, "job-1 done")
        ((during,),) = observed.mid_job
        assert during.current_job == "job-1"
        assert (during.gpu_memory_bytes, during.gpu_memory_peak_bytes) == (123, 456)
        assert during.last_seen >= record.last_seen
        assert job_store.get("job-1").batch_size == 1

        worker.beat()  # idle again
        (idle,) = job_store.list_workers()
        assert idle.current_job is None
        # Purged by housekeeping after a long silence (a stall): the next beat re-registers.
        job_store.purge_workers(seen_before=time.time() + 1)
        assert job_store.list_workers() == []
        worker.beat()
        assert [w.id for w in job_store.list_workers()] == ["w-1"]
    finally:
        stop.set()
        wake.set()
        thread.join(60)
    assert not thread.is_alive()
    assert job_store.list_workers() == []  # a clean exit removes the row


def test_lease_keeper_calls_on_beat_without_a_job(job_store):
    beats = threading.Semaphore(0)
    keeper = LeaseKeeper(job_store, 0.3, on_beat=beats.release)
    try:
        assert beats.acquire(timeout=30)
        assert beats.acquire(timeout=30)  # again: on every beat, held job or not
    finally:
        keeper.close()


def test_real_runner_memory_stats_off_cuda(runner):
    assert runner.device == "cpu" or runner.device.startswith("cuda")
    allocated, peak = runner.memory_stats()
    if runner.device == "cpu":
        assert (allocated, peak) == (None, None)
    else:
        assert 0 < allocated <= peak
