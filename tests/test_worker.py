"""The worker loop on the real tiny FLUX runner: results, progress, failures, determinism."""

from __future__ import annotations

import dataclasses
import io
import time

import pytest
from PIL import Image

from fluxserve.domain import GenerationRequest, Job, JobStatus, OutputFormat
from fluxserve.engine.lease import LeaseKeeper
from fluxserve.engine.signals import Flag, Wakeup
from fluxserve.engine.worker import Worker, WorkerOptions
from fluxserve.runtime.diffusers_runner import FluxRunner
from fluxserve.storage.local import LocalStorage
from fluxserve.store.sqlite import SqliteJobStore
from fluxserve.weights import resolve_model
from tests.helpers import wait_for


@pytest.fixture(scope="module")
def runner(tiny_model_dir):
    runner = FluxRunner([resolve_model(str(tiny_model_dir), tiny_model_dir.parent)])
    runner.load()
    return runner


class FailingForPrompt:
    """The real runner, except that one prompt raises, as a CUDA error would."""

    def __init__(self, runner, bad_prompt: str) -> None:
        self.runner, self.bad_prompt, self.name = runner, bad_prompt, runner.name
        self.model_names = runner.model_names

    def load(self) -> None: ...

    def generate(self, request, inputs, on_step, should_stop):
        if request.prompt == self.bad_prompt:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.runner.generate(request, inputs, on_step, should_stop)


def request(runner, seed=1, prompt="a fox", fmt=OutputFormat.PNG, steps=2) -> GenerationRequest:
    return GenerationRequest(
        model=runner.name, prompt=prompt, width=256, height=256, steps=steps, guidance=3.0,
        seed=seed, output_format=fmt,
    )  # fmt: skip


@pytest.fixture
def parts(tmp_path):
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    storage = LocalStorage(tmp_path / "blobs", tmp_path / "secret")
    yield store, storage
    store.close()


def make_worker(parts, runner) -> Worker:
    store, storage = parts
    options = WorkerOptions(worker_id="test-worker", lease_seconds=30)
    return Worker(store, storage, runner, options, Wakeup(), Flag())


def run_jobs(parts, runner, requests) -> list[Job]:
    store, _ = parts
    for index, req in enumerate(requests):
        store.create(Job(id=f"job-{index}", request=req))
    worker = make_worker(parts, runner)
    while worker.run_once():
        pass
    return [store.get(f"job-{index}") for index in range(len(requests))]


def test_same_seed_same_bytes_other_seed_differs(parts, runner):
    storage = parts[1]
    jobs = run_jobs(parts, runner, [request(runner, 5), request(runner, 5), request(runner, 6)])
    assert all(job.status is JobStatus.SUCCEEDED for job in jobs)
    first, again, other = (storage.get(job.result_keys[0]) for job in jobs)
    assert first == again
    assert first != other


def test_each_output_format(parts, runner):
    formats = list(OutputFormat)
    jobs = run_jobs(parts, runner, [request(runner, fmt=f) for f in formats])
    for job, fmt in zip(jobs, formats, strict=True):
        assert job.result_keys == [f"results/{job.id}/1-0.{fmt.value}"]


def test_failing_job_is_error_and_worker_goes_on(parts, runner):
    failing = FailingForPrompt(runner, "boom")
    jobs = run_jobs(
        parts, failing, [request(runner, prompt="boom"), request(runner, prompt="fine")]
    )
    assert jobs[0].status is JobStatus.FAILED
    assert jobs[0].error_code == "generation_failed"
    assert "CUDA" not in jobs[0].error_message  # internal text stays in the log
    assert jobs[0].id in jobs[0].error_message
    assert jobs[1].status is JobStatus.SUCCEEDED


def test_progress_reported_per_step(parts, runner):
    store, _ = parts
    seen: list[float] = []

    class Recording:
        name, model_names = runner.name, runner.model_names

        def generate(self, req, inputs, on_step, should_stop):
            def spy(done, total):
                on_step(done, total)
                seen.append(store.get("job-0").progress)

            return runner.generate(req, inputs, spy, should_stop)

    (job,) = run_jobs(parts, Recording(), [request(runner, steps=30)])
    assert seen == sorted(seen)
    assert any(0 < p < 1 for p in seen)
    assert job.progress == 1.0


def test_lost_lease_drops_result(parts, runner):
    """A worker whose heartbeat is refused stops at the next step and writes nothing."""
    store, storage = parts
    store.create(Job(id="job-0", request=request(runner, steps=4)))
    options = WorkerOptions(worker_id="test-worker", lease_seconds=0.3)
    worker = Worker(store, storage, runner, options, Wakeup(), Flag())
    job = store.claim("test-worker", [runner.name], 0.3)

    class Evicting:
        name, model_names = runner.name, runner.model_names

        def generate(self, req, inputs, on_step, should_stop):
            def evict_then_wait(done, total):
                on_step(done, total)
                if done == 1:  # another server decides this worker is dead
                    # and requeues its job in one step (a heartbeat between "expire" and
                    # "requeue" would otherwise renew the lease on a busy machine)
                    assert store.release(job.id, job.attempt)
                    deadline = time.monotonic() + 5
                    while not should_stop() and time.monotonic() < deadline:
                        time.sleep(0.01)  # the lease keeper's next heartbeat is refused

            return runner.generate(req, inputs, evict_then_wait, should_stop)

    worker.runner = Evicting()
    worker.process([job])
    worker.lease.close()
    after = store.get("job-0")
    assert after.status is JobStatus.QUEUED
    assert after.result_keys == []
    assert not any(storage.root.rglob("*.png"))


def test_lease_keeper_heartbeats_and_notices_loss(parts):
    store, _ = parts
    store.create(Job(id="job-0", request=request(FluxRunnerName())))
    # A heartbeat every third of the lease (0.6 s) keeps a 1.8 s lease alive.
    job = store.claim("w", ["tiny"], 1.8)
    first_expiry = store.get(job.id).lease_expires_at
    keeper = LeaseKeeper(store, 1.8)
    try:
        keeper.hold(job)
        # Waits for a heartbeat, not the clock: the lease has been renewed past the claim's.
        wait_for(lambda: store.get(job.id).lease_expires_at > first_expiry,
                 "a heartbeat to renew the lease", timeout=30)  # fmt: skip
        # So the moment the first lease would have run out, the job is still held.
        assert store.requeue_expired(max_attempts=2, now=first_expiry + 0.01) == []
        assert not keeper.lost
        # Another member takes the job back (as a sweep of an expired lease would), in one
        # step, so no heartbeat can land between "expired" and "requeued".
        assert store.release(job.id, job.attempt)
        wait_for(lambda: keeper.lost, "the keeper to notice the lost lease", timeout=30)
    finally:
        keeper.close()


class FluxRunnerName:
    name = "tiny"


def test_a_batch_runs_jobs_sharing_a_key_together_each_with_its_own_image(parts, runner):
    import numpy as np

    from fluxserve.engine.batcher import BatchPolicy
    from fluxserve.engine.moderation import Moderation
    from fluxserve.runtime.base import GenerationInputs
    from fluxserve.safety.checks import SafetyChecks
    from fluxserve.safety.terms import TermList

    store, storage = parts
    small = [request(runner, seed=s, prompt=p, steps=2)
             for s, p in ((1, "a fox"), (2, "a dragon"), (3, "an owl"))]  # fmt: skip
    other = dataclasses.replace(small[0], width=128, height=128)  # another batch key
    for index, req in enumerate([*small, other]):
        store.create(Job(id=f"job-{index}", request=req))
    options = WorkerOptions(worker_id="w", lease_seconds=30, batch=BatchPolicy(max_size=4))
    refusing = Moderation(SafetyChecks(terms=TermList(["dragon"])))
    worker = Worker(store, storage, runner, options, Wakeup(), Flag(), refusing)
    try:
        assert worker.run_once()  # job-0..2 as one batch (job-1 refused), not job-3
        assert store.get("job-3").status is JobStatus.QUEUED
        assert worker.run_once()
    finally:
        worker.lease.close()
    done = [store.get(f"job-{i}") for i in range(4)]
    assert [job.status for job in done] == [
        JobStatus.SUCCEEDED, JobStatus.REQUEST_MODERATED, JobStatus.SUCCEEDED,
        JobStatus.SUCCEEDED,
    ]  # fmt: skip
    # Claimed together: the third job started before the first one finished.
    assert done[2].started_at < done[0].finished_at
    for job in (done[0], done[2]):
        (solo,) = runner.generate(job.request, GenerationInputs(), lambda *_: None, lambda: False)
        stored = Image.open(io.BytesIO(storage.get(job.result_keys[0])))
        difference = np.abs(np.asarray(stored, np.int16) - np.asarray(solo, np.int16))
        assert difference.max() <= 2  # each image is its solo image, within float tolerance
