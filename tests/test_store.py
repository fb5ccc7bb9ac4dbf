"""The SQLite job store: queue order, leases, fencing, recovery."""

from __future__ import annotations

import time

import pytest

from fluxserve.domain import GenerationRequest, Job, JobStatus
from fluxserve.store.sqlite import SqliteJobStore


def make_job(job_id: str, model: str = "tiny", seed: int = 1) -> Job:
    request = GenerationRequest(
        model=model, prompt="p", width=256, height=256, steps=2, guidance=3.0, seed=seed
    )
    return Job(id=job_id, request=request)


@pytest.fixture
def store(sqlite_store):
    """The store of the contract below (tests/test_postgres.py reruns it on PostgreSQL)."""
    return sqlite_store


def test_claims_in_submission_order_and_only_own_model(store):
    for job_id, model in [("a", "tiny"), ("b", "other"), ("c", "tiny")]:
        store.create(make_job(job_id, model))
    assert store.claim("w", ["tiny"], 30).id == "a"
    assert store.claim("w", ["tiny"], 30).id == "c"
    assert store.claim("w", ["tiny"], 30) is None
    assert store.claim("w", ["other"], 30).id == "b"


def test_claim_sets_lease_and_attempt(store):
    store.create(make_job("a"))
    job = store.claim("worker-1", ["tiny"], 30)
    assert job.status is JobStatus.RUNNING
    assert job.attempt == 1
    assert job.worker_id == "worker-1"
    assert job.lease_expires_at > time.time() + 25


def test_uint64_seed_round_trips(store):
    store.create(make_job("a", seed=2**64 - 1))
    assert store.get("a").request.seed == 2**64 - 1


def test_queue_position(store):
    for job_id in "abc":
        store.create(make_job(job_id))
    assert [store.queue_position(store.get(j)) for j in "abc"] == [0, 1, 2]
    store.claim("w", ["tiny"], 30)
    assert store.queue_position(store.get("a")) is None
    assert store.queue_position(store.get("c")) == 1


def test_stale_attempt_cannot_write(store):
    """The attempt number fences a worker whose lease expired and was re-claimed."""
    store.create(make_job("a"))
    first = store.claim("w1", ["tiny"], 30)
    store.expire_leases("w1")
    assert [j.status for j in store.requeue_expired(max_attempts=2)] == [JobStatus.QUEUED]
    second = store.claim("w2", ["tiny"], 30)
    assert second.attempt == first.attempt + 1
    assert not store.set_progress("a", first.attempt, 0.5)
    assert not store.complete("a", first.attempt, ["results/a/0.jpeg"])
    assert not store.heartbeat("a", first.attempt, 30)
    assert store.complete("a", second.attempt, ["results/a/2-0.png"])
    done = store.get("a")
    assert done.status is JobStatus.SUCCEEDED
    assert done.result_keys == ["results/a/2-0.png"]
    assert done.progress == 1.0


def test_complete_only_once(store):
    store.create(make_job("a"))
    job = store.claim("w", ["tiny"], 30)
    assert store.complete("a", job.attempt, ["k.png"])
    assert not store.fail("a", job.attempt, "x", "late failure must not overwrite success")
    assert store.get("a").status is JobStatus.SUCCEEDED


def test_live_lease_is_not_requeued(store):
    store.create(make_job("a"))
    store.claim("w", ["tiny"], 30)
    assert store.requeue_expired(max_attempts=2) == []
    assert store.get("a").status is JobStatus.RUNNING


def test_expired_lease_requeued_then_failed_after_max_attempts(store):
    store.create(make_job("a"))
    store.claim("w", ["tiny"], 0.01)
    time.sleep(0.02)
    (requeued,) = store.requeue_expired(max_attempts=2)
    assert requeued.status is JobStatus.QUEUED
    assert requeued.progress == 0.0
    store.claim("w", ["tiny"], 30)
    store.expire_leases("w")
    (failed,) = store.requeue_expired(max_attempts=2)
    assert failed.status is JobStatus.FAILED
    assert failed.error_code == "worker_lost"
    assert store.claim("w", ["tiny"], 30) is None


def test_heartbeat_extends_lease(store):
    store.create(make_job("a"))
    job = store.claim("w", ["tiny"], 0.05)
    assert store.heartbeat("a", job.attempt, 60)
    time.sleep(0.1)
    assert store.requeue_expired(max_attempts=2) == []


def test_fail_queued_job(store):
    store.create(make_job("a"))
    assert store.fail("a", None, "code", "message")
    job = store.get("a")
    assert (job.status, job.error_code, job.error_message) == (JobStatus.FAILED, "code", "message")


def test_survives_reopen(tmp_path):
    path = tmp_path / "jobs.sqlite3"
    first = SqliteJobStore(path)
    first.create(make_job("a"))
    first.close()
    second = SqliteJobStore(path)
    assert second.get("a").status is JobStatus.QUEUED
    second.close()


def test_queued_counts(store):
    for job_id, model in [("a", "tiny"), ("b", "other"), ("c", "tiny")]:
        store.create(make_job(job_id, model))
    store.claim("w", ["tiny"], 30)
    assert store.queued_counts() == {"tiny": 1, "other": 1}


def test_cancelled_running_job_whose_worker_died_ends_cancelled(store):
    store.create(make_job("a"))
    store.claim("w", ["tiny"], 30)
    assert store.request_cancel("a") is JobStatus.RUNNING
    store.expire_leases("w")
    (job,) = store.requeue_expired(max_attempts=2)
    assert job.status is JobStatus.CANCELLED
    assert store.claim("w2", ["tiny"], 30) is None


def test_forget_results_has_one_winner(store):
    store.create(make_job("a"))
    job = store.claim("w", ["tiny"], 30)
    store.complete("a", job.attempt, ["results/a/1-0.png"])
    assert store.forget_results("a", ["results/a/1-0.png"])
    assert not store.forget_results("a", ["results/a/1-0.png"])
    assert store.get("a").result_keys == []


def test_schema_migration_adds_cancel_requested(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)  # the job table as the first release created it
    old.execute(
        "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id VARCHAR(64) NOT NULL "
        "UNIQUE, model VARCHAR(200) NOT NULL, status VARCHAR(32) NOT NULL, request TEXT NOT "
        "NULL, progress FLOAT NOT NULL, attempt INTEGER NOT NULL, worker_id VARCHAR(200), "
        "lease_expires_at FLOAT, created_at FLOAT NOT NULL, started_at FLOAT, finished_at "
        "FLOAT, result_keys TEXT, error_code VARCHAR(64), error_message TEXT)"
    )
    old.commit()
    old.close()
    migrated = SqliteJobStore(path)
    migrated.create(make_job("a"))
    assert migrated.request_cancel("a") is JobStatus.CANCELLED
    migrated.close()


def make_sized_job(job_id: str, width: int, model: str = "tiny", seed: int = 1) -> Job:
    request = GenerationRequest(
        model=model, prompt=f"p{seed}", width=width, height=256, steps=2, guidance=3.0, seed=seed
    )
    return Job(id=job_id, request=request)


def test_claim_batch_gathers_queued_jobs_sharing_the_first_ones_key(store):
    # Same key: same model, task, size, steps, guidance; prompts and seeds differ.
    for index, width in enumerate([256, 512, 256, 256, 256]):
        store.create(make_sized_job(f"j{index}", width, seed=index))
    store.create(make_sized_job("other-model", 256, model="flux-dev"))
    batch = store.claim_batch("w", ["tiny"], lease_seconds=30, limit=3)
    assert [job.id for job in batch] == ["j0", "j2", "j3"]  # j1 is 512 wide: another batch
    assert all(job.status is JobStatus.RUNNING and job.attempt == 1 for job in batch)
    assert {job.worker_id for job in batch} == {"w"}
    assert store.get("j1").status is JobStatus.QUEUED
    assert store.get("j4").status is JobStatus.QUEUED  # past the limit
    assert store.get("other-model").status is JobStatus.QUEUED
    assert [job.id for job in store.claim_batch("w", ["tiny"], 30, limit=8)] == ["j1"]
    assert [job.id for job in store.claim_batch("w", ["tiny"], 30, limit=8)] == ["j4"]
    assert store.claim_batch("w", ["tiny"], 30, limit=8) == []


def test_claim_batch_of_one_is_a_claim(store):
    store.create(make_sized_job("a", 256))
    store.create(make_sized_job("b", 256, seed=2))
    assert [job.id for job in store.claim_batch("w", ["tiny"], 30, limit=1)] == ["a"]
    assert store.get("b").status is JobStatus.QUEUED


def test_the_purge_keeps_a_job_whose_webhook_is_still_being_delivered(store):
    from fluxserve.domain import Webhook

    plain, announced = make_job("plain"), make_job("announced")
    announced.webhook = Webhook("https://receiver.example/hook", "bfl")
    for job in (plain, announced):
        store.create(job)
        claimed = store.claim("w", ["tiny"], 30)
        store.complete(claimed.id, claimed.attempt, [])
    later = time.time() + 10
    assert store.ended_before(later) == ["plain"]
    store.record_webhook("announced", 0, "delivered", None, None)
    assert sorted(store.ended_before(later)) == ["announced", "plain"]
