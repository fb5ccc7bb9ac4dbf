"""The PostgreSQL job store (cluster mode): the store contract, SKIP LOCKED claims,
LISTEN/NOTIFY wake-ups, Alembic migrations, reconnects, and 503 while the database is down.

Every test gets a fresh, empty database from the ``pg_url`` fixture (tests/conftest.py).
"""

from __future__ import annotations

import inspect
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

import tests.test_store as sqlite_contract
from fluxserve.api.app import create_app
from fluxserve.config import Settings
from fluxserve.domain import JobReport, JobStatus
from fluxserve.store.postgres import LISTEN_POLL, RECONNECT_DELAY, PostgresJobStore
from fluxserve.store.tables import jobs, metadata
from tests.conftest import POSTGRES_ADMIN_URL
from tests.helpers import SMALL, poll_result, wait_ready
from tests.test_store import make_job

WAKE_BOUND = 5.0  # seconds: how long a NOTIFY may take to wake a listener, generously

HEAD_REVISION = "0007"  # the newest migration in store/migrations/versions


@pytest.fixture
def store(pg_url: str) -> Iterator[PostgresJobStore]:
    store = PostgresJobStore(pg_url)
    yield store
    store.close()


# -- 1. the store contract -------------------------------------------------------------------
# Every test of tests/test_store.py that takes only the ``store`` fixture runs here again,
# on PostgreSQL: pytest resolves ``store`` in this module to the fixture above.
CONTRACT = {
    name: test
    for name, test in vars(sqlite_contract).items()
    if name.startswith("test_") and list(inspect.signature(test).parameters) == ["store"]
}
globals().update(CONTRACT)


def test_the_sqlite_contract_is_rerun_here():
    expected = {
        "test_claims_in_submission_order_and_only_own_model",
        "test_claim_sets_lease_and_attempt",
        "test_queue_position",
        "test_stale_attempt_cannot_write",
        "test_expired_lease_requeued_then_failed_after_max_attempts",
        "test_heartbeat_extends_lease",
        "test_cancelled_running_job_whose_worker_died_ends_cancelled",
        "test_forget_results_has_one_winner",
    }
    assert expected <= set(CONTRACT)
    assert all(globals()[name] is CONTRACT[name] for name in expected)


def test_store_is_shared_and_answers_ping(store):
    assert store.shared is True
    assert store.ping()
    assert store.engine.dialect.name == "postgresql"
    assert store.engine.dialect.driver == "psycopg"


def test_create_and_get_round_trip(store):
    created = store.create(make_job("a", seed=2**64 - 1))
    assert created.seq is not None
    assert created.created_at > 0
    job = store.get("a")
    assert (job.id, job.seq, job.status, job.attempt) == ("a", created.seq, JobStatus.QUEUED, 0)
    assert job.request == created.request
    assert job.request.seed == 2**64 - 1
    assert job.cancel_requested is False
    assert job.report == JobReport()
    assert store.get("missing") is None
    with pytest.raises(sa.exc.IntegrityError):  # ids are unique
        store.create(make_job("a"))


def test_a_stale_attempt_cannot_write_anything(store):
    """The zombie worker: its lease expired and another worker claimed the job again; every
    late write of the old attempt is rejected and leaves the new attempt's job as it was."""
    store.create(make_job("a"))
    zombie = store.claim("w1", ["tiny"], 30)
    store.expire_leases("w1")
    assert [j.id for j in store.requeue_expired(max_attempts=3)] == ["a"]
    live = store.claim("w2", ["tiny"], 30)
    assert live.attempt == zombie.attempt + 1
    assert store.set_progress("a", live.attempt, 0.25)
    before = store.get("a")

    report = JobReport(notes=["zombie"])
    assert not store.set_progress("a", zombie.attempt, 0.9)
    assert not store.heartbeat("a", zombie.attempt, 300)
    assert not store.complete("a", zombie.attempt, ["results/a/1-0.png"], report)
    assert not store.moderate("a", zombie.attempt, report, "refused by a zombie")
    assert not store.release("a", zombie.attempt)
    assert not store.fail("a", zombie.attempt, "x", "late failure")
    assert not store.cancel_running("a", zombie.attempt)
    assert store.get("a") == before
    assert (before.status, before.worker_id, before.progress) == (JobStatus.RUNNING, "w2", 0.25)


def test_release_requeues_a_running_job_fenced_by_attempt(store):
    store.create(make_job("a"))
    job = store.claim("w1", ["tiny"], 30)
    store.set_progress("a", job.attempt, 0.5)
    assert not store.release("a", job.attempt + 1)  # not the holder's attempt
    assert store.get("a").status is JobStatus.RUNNING
    assert store.release("a", job.attempt)
    released = store.get("a")
    assert (released.status, released.worker_id, released.lease_expires_at, released.progress) == (
        JobStatus.QUEUED,
        None,
        None,
        0.0,
    )
    assert not store.release("a", job.attempt)  # only a running job can be released
    again = store.claim("w2", ["tiny"], 30)
    assert (again.id, again.attempt, again.worker_id) == ("a", job.attempt + 1, "w2")
    assert not store.complete("a", job.attempt, ["k.png"])
    assert store.complete("a", again.attempt, ["k.png"])


def test_report_round_trips_through_complete_and_moderate(store):
    verdict = {"point": "output", "allowed": False, "category": "nsfw", "score": 0.97,
               "checker": "tiny", "tolerance": 2}  # fmt: skip
    report = JobReport(
        verdicts=[verdict], prompt="a rewritten prompt ✓", notes=["n1"], blocked_outputs=[0]
    )
    store.create(make_job("a"))
    job = store.claim("w", ["tiny"], 30)
    assert store.complete("a", job.attempt, ["results/a/1-0.png"], report,
                          status=JobStatus.CONTENT_MODERATED)  # fmt: skip
    done = store.get("a")
    assert done.report == report
    assert (done.status, done.error_code) == (JobStatus.CONTENT_MODERATED, "content_moderated")
    assert done.result_keys == ["results/a/1-0.png"]
    assert done.finished_at is not None
    assert done.lease_expires_at is None

    store.create(make_job("b"))
    job = store.claim("w", ["tiny"], 30)
    refusal = JobReport(verdicts=[{**verdict, "point": "prompt"}])
    assert store.moderate("b", job.attempt, refusal, "The prompt was refused.")
    refused = store.get("b")
    assert refused.report == refusal
    assert (refused.status, refused.error_code, refused.error_message) == (
        JobStatus.REQUEST_MODERATED,
        "request_moderated",
        "The prompt was refused.",
    )
    assert not store.moderate("b", job.attempt, refusal, "twice")  # it has ended


def test_request_cancel(store):
    assert store.request_cancel("missing") is None
    store.create(make_job("queued"))
    assert store.request_cancel("queued") is JobStatus.CANCELLED
    cancelled = store.get("queued")
    assert (cancelled.error_code, cancelled.cancel_requested) == ("cancelled", False)
    assert cancelled.finished_at is not None

    store.create(make_job("running"))
    job = store.claim("w", ["tiny"], 30)
    assert not store.is_cancel_requested("running")
    assert store.request_cancel("running") is JobStatus.RUNNING
    assert store.is_cancel_requested("running")
    assert store.get("running").cancel_requested is True
    assert store.cancel_running("running", job.attempt)
    assert store.get("running").status is JobStatus.CANCELLED
    # An ended job stays as it ended.
    assert store.request_cancel("running") is JobStatus.CANCELLED


def test_purge_ended_deletes_only_old_ended_jobs(store):
    for job_id in ["done-1", "done-2", "done-3", "claimed", "waiting", "recent"]:
        store.create(make_job(job_id))
    for job_id in ["done-1", "done-2", "done-3"]:
        assert store.fail(job_id, None, "x", "ended")
    assert store.claim("w", ["tiny"], 30).id == "claimed"  # the oldest queued one
    cutoff = time.time() + 0.001
    time.sleep(0.01)
    assert store.fail("recent", None, "x", "ended after the cutoff")

    assert store.purge_ended(cutoff, limit=2) == ["done-1", "done-2"]  # oldest first
    assert store.purge_ended(cutoff) == ["done-3"]
    assert store.purge_ended(cutoff) == []
    assert store.get("done-1") is None
    left = {job_id: store.get(job_id).status for job_id in ["claimed", "waiting", "recent"]}
    assert left == {
        "claimed": JobStatus.RUNNING,
        "waiting": JobStatus.QUEUED,
        "recent": JobStatus.FAILED,
    }


def test_requeue_expired_sorts_cancelled_failed_and_requeued(store):
    for job_id in "abc":
        store.create(make_job(job_id))
    a = store.claim("w", ["tiny"], 30)
    store.claim("w", ["tiny"], 30)
    store.claim("w", ["tiny"], 30)
    store.request_cancel("a")
    # "b" has used up its attempts; "c" has not.
    with store.engine.begin() as conn:
        conn.execute(jobs.update().where(jobs.c.id == "b").values(attempt=2))
    assert store.requeue_expired(max_attempts=2, now=time.time()) == []  # leases are live
    ended = store.requeue_expired(max_attempts=2, now=time.time() + 60)
    assert {j.id: j.status for j in ended} == {
        "a": JobStatus.CANCELLED,
        "b": JobStatus.FAILED,
        "c": JobStatus.QUEUED,
    }
    assert store.get("b").error_code == "worker_lost"
    assert store.get("a").attempt == a.attempt
    assert store.claim("w2", ["tiny"], 30).id == "c"


# -- 2. concurrent claims ---------------------------------------------------------------------


def test_claim_skips_a_row_another_transaction_holds(store, pg_url):
    """SKIP LOCKED: a claim takes the next free job instead of waiting for a locked one."""
    store.create(make_job("a"))
    store.create(make_job("b"))
    claimed: list[Any] = []
    with psycopg.connect(pg_url) as holder:  # a transaction that holds "a"'s row
        holder.execute("SELECT seq FROM jobs WHERE id = 'a' FOR UPDATE")
        claimer = threading.Thread(
            target=lambda: claimed.append(store.claim("w", ["tiny"], 30)), daemon=True
        )
        claimer.start()
        claimer.join(5)
        blocked = claimer.is_alive()
        holder.rollback()
    claimer.join(5)
    assert not blocked, "the claim waited for the row another transaction holds"
    assert [job.id for job in claimed] == ["b"]
    assert store.get("a").status is JobStatus.QUEUED


def test_racing_claimers_take_every_job_exactly_once(pg_url):
    first = PostgresJobStore(pg_url)
    stores = [first] + [PostgresJobStore(pg_url, migrate=False) for _ in range(7)]
    try:
        ids = [f"job-{i:03d}" for i in range(200)]
        for job_id in ids:
            first.create(make_job(job_id))
        start = threading.Barrier(len(stores))
        claims: dict[str, list[str]] = {}
        errors: list[BaseException] = []

        def claim_all(index: int, store: PostgresJobStore) -> None:
            worker = f"w{index}"
            mine = claims.setdefault(worker, [])
            try:
                start.wait(10)
                while (job := store.claim(worker, ["tiny"], 30)) is not None:
                    mine.append(job.id)
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=claim_all, args=(i, s), daemon=True)
            for i, s in enumerate(stores)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []
        every_claim = [job_id for mine in claims.values() for job_id in mine]
        twice = [job_id for job_id, n in Counter(every_claim).items() if n > 1]
        assert twice == []
        assert sorted(every_claim) == ids
        with first.engine.connect() as conn:
            rows = conn.execute(sa.select(jobs.c.id, jobs.c.status, jobs.c.attempt,
                                          jobs.c.worker_id)).all()  # fmt: skip
        owner = {job_id: worker for worker, mine in claims.items() for job_id in mine}
        assert {r.id: (r.status, r.attempt, r.worker_id) for r in rows} == {
            job_id: ("running", 1, owner[job_id]) for job_id in ids
        }
        # Each claim took the oldest free job: a worker's own claims are in queue order.
        assert all(mine == sorted(mine) for mine in claims.values())
    finally:
        for s in stores:
            s.close()


# -- 3. LISTEN/NOTIFY -----------------------------------------------------------------------


@contextmanager
def listening(store: PostgresJobStore) -> Iterator[threading.Event]:
    """``store.listen`` in a thread; yields the event it sets, cleared once it listens."""
    woke, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=store.listen, args=(woke.set, stop.is_set), daemon=True)
    thread.start()
    try:
        # listen wakes once as soon as it listens (jobs queued before are not missed).
        assert woke.wait(WAKE_BOUND), "listen did not start"
        woke.clear()
        yield woke
    finally:
        stop.set()
        thread.join(LISTEN_POLL + 5)
    assert not thread.is_alive(), "listen did not return after stop"


def listener_pids(store: PostgresJobStore) -> list[int]:
    with store.engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND query LIKE 'LISTEN%'"
                )
            ).scalars()
        )


def test_listen_wakes_on_queued_jobs_from_another_store(pg_url):
    listener, other = PostgresJobStore(pg_url), PostgresJobStore(pg_url, migrate=False)
    try:
        with listening(listener) as woke:
            # No wake-up without a NOTIFY (so the wake-ups below are the NOTIFYs'), and
            # none for a job created already ended.
            ended = make_job("ended")
            ended.status = JobStatus.REQUEST_MODERATED
            other.create(ended)
            assert not woke.wait(LISTEN_POLL * 1.5)

            other.create(make_job("a"))
            assert woke.wait(WAKE_BOUND), "create did not wake the listener"

            job = other.claim("w", ["tiny"], 30)
            woke.clear()
            assert other.release("a", job.attempt)
            assert woke.wait(WAKE_BOUND), "release did not wake the listener"

            other.claim("w", ["tiny"], 30)
            other.expire_leases("w")
            woke.clear()
            assert [j.status for j in other.requeue_expired(max_attempts=5)] == [JobStatus.QUEUED]
            assert woke.wait(WAKE_BOUND), "requeue_expired did not wake the listener"
    finally:
        listener.close()
        other.close()


def test_listen_reconnects_after_its_connection_is_terminated(pg_url):
    listener, other = PostgresJobStore(pg_url), PostgresJobStore(pg_url, migrate=False)
    try:
        with listening(listener) as woke:
            (old_pid,) = listener_pids(other)
            with other.engine.connect() as conn:
                terminated = conn.execute(
                    sa.text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                        "datname = current_database() AND query LIKE 'LISTEN%'"
                    )
                ).scalars()
                assert list(terminated) == [True]
            # It listens again after RECONNECT_DELAY, and wakes then: a job queued while it
            # was away is not missed.
            assert woke.wait(RECONNECT_DELAY + WAKE_BOUND), "listen did not reconnect"
            (new_pid,) = listener_pids(other)
            assert new_pid != old_pid
            woke.clear()
            other.create(make_job("a"))
            assert woke.wait(WAKE_BOUND), "create did not wake the reconnected listener"
    finally:
        listener.close()
        other.close()


# -- 4. migrations ----------------------------------------------------------------------------


def schema_of(url: str) -> tuple[set[str], list[str], set[str]]:
    """(column names of jobs, alembic versions, index names of jobs)."""
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        inspector = sa.inspect(engine)
        columns = {c["name"] for c in inspector.get_columns("jobs")}
        indexes = {i["name"] for i in inspector.get_indexes("jobs")}
        with engine.connect() as conn:
            versions = list(
                conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars()
            )
    finally:
        engine.dispose()
    return columns, versions, indexes


def test_fresh_database_is_migrated_to_head(store, pg_url):
    columns, versions, indexes = schema_of(pg_url)
    assert columns == {c.name for c in metadata.tables["jobs"].columns}
    assert versions == [HEAD_REVISION]
    assert "ix_jobs_claim" in indexes
    store.create(make_job("a"))
    reopened = PostgresJobStore(pg_url)  # migrating again is a no-op that keeps the jobs
    try:
        assert reopened.get("a").status is JobStatus.QUEUED
    finally:
        reopened.close()
    assert schema_of(pg_url)[1] == [HEAD_REVISION]


def test_stores_opened_at_once_on_an_empty_database_all_succeed(pg_url):
    """Replicas starting together on an empty database take turns (advisory lock)."""
    start = threading.Barrier(4)
    opened: list[PostgresJobStore] = []
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            start.wait(10)
            opened.append(PostgresJobStore(pg_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    try:
        assert not any(thread.is_alive() for thread in threads), "a migration hung"
        assert errors == []
        assert len(opened) == 4
        assert schema_of(pg_url)[1] == [HEAD_REVISION]
        opened[0].create(make_job("a"))
        assert opened[-1].get("a") is not None
    finally:
        for s in opened:
            s.close()


def test_old_jobs_table_is_upgraded_and_keeps_its_rows(pg_url):
    old = make_job("old")
    with psycopg.connect(pg_url) as conn:  # the jobs table as the first release created it
        conn.execute(
            "CREATE TABLE jobs (seq SERIAL PRIMARY KEY, id VARCHAR(64) NOT NULL UNIQUE, "
            "model VARCHAR(200) NOT NULL, status VARCHAR(32) NOT NULL, request TEXT NOT NULL, "
            "progress FLOAT NOT NULL, attempt INTEGER NOT NULL, worker_id VARCHAR(200), "
            "lease_expires_at FLOAT, created_at FLOAT NOT NULL, started_at FLOAT, "
            "finished_at FLOAT, result_keys TEXT, error_code VARCHAR(64), error_message TEXT)"
        )
        conn.execute(
            "INSERT INTO jobs (id, model, status, request, progress, attempt, created_at) "
            "VALUES ('old', 'tiny', 'queued', %s, 0, 0, 1.5)",
            (json.dumps(old.request.to_dict()),),
        )
    store = PostgresJobStore(pg_url)
    try:
        columns, versions, _ = schema_of(pg_url)
        assert {"cancel_requested", "report"} <= columns
        assert versions == [HEAD_REVISION]
        kept = store.get("old")
        assert (kept.status, kept.created_at, kept.request) == (
            JobStatus.QUEUED,
            1.5,
            old.request,
        )
        assert kept.cancel_requested is False
        assert kept.report == JobReport()
        store.create(make_job("new"))
        job = store.claim("w", ["tiny"], 30)
        assert job.id == "old"  # the kept row is still first in the queue
        assert store.request_cancel("old") is JobStatus.RUNNING
        assert store.is_cancel_requested("old")
    finally:
        store.close()


# -- 5. reconnect -----------------------------------------------------------------------------


def admin_connection() -> psycopg.Connection:
    """A connection to the admin database, for statements about the test's database."""
    return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)


def terminate_backends(admin: psycopg.Connection, database: str) -> int:
    rows = admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        (database,),
    ).fetchall()
    return sum(1 for (done,) in rows if done)


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


def test_store_reconnects_after_its_connections_are_terminated(store, pg_url):
    store.create(make_job("a"))
    held = [store.engine.connect() for _ in range(3)]  # fill the pool with 3 connections
    for conn in held:
        conn.exec_driver_sql("SELECT 1")
        conn.close()
    assert store.engine.pool.checkedin() == 3
    with admin_connection() as admin:
        assert terminate_backends(admin, database_name(pg_url)) >= 3
    # Every pooled connection is dead; pre-ping replaces each instead of failing.
    assert store.get("a").status is JobStatus.QUEUED
    store.create(make_job("b"))
    assert store.claim("w", ["tiny"], 30).id == "a"
    assert store.queued_counts() == {"tiny": 1}
    assert store.ping()


# -- 6. the API while the database is down ----------------------------------------------------


def bounded(call: Callable[[], Any], seconds: float = 15.0) -> tuple[Any, float]:
    """``call()`` in a thread, failing the test if it takes longer than ``seconds``
    instead of hanging; (its result, the time it took)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"no answer within {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"], time.monotonic() - started


def assert_database_down(response, dialect: str) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    body = response.json()
    if dialect == "openai":
        error = body["error"]
        assert (error["type"], error["code"]) == ("server_error", "database_unavailable")
        assert "database" in error["message"]
    elif dialect == "fal":
        assert body["error_type"] == "database_unavailable"
        assert response.headers["X-Fal-Error-Type"] == "database_unavailable"
        assert "database" in body["detail"]
    else:
        assert set(body) == {"detail", "message"}
        assert body["detail"] == body["message"]
        assert "database" in body["detail"]


def test_api_answers_503_while_the_database_refuses_and_recovers(
    pg_url, tmp_path: Path, tiny_model_dir: Path
):
    settings = Settings(
        model=[str(tiny_model_dir)],
        data_dir=tmp_path / "data",
        worker_mode="thread",
        database=pg_url,
    )
    name = database_name(pg_url)
    with TestClient(create_app(settings)) as client, admin_connection() as admin:
        wait_ready(client)
        # One job first, so the API's and the worker's pools hold connections to lose.
        first = client.post("/v1/flux-dev", json={"prompt": "before", "seed": 1, **SMALL})
        assert first.status_code == 200, first.text
        assert poll_result(client, first.json()["id"])["status"] == "Ready"
        try:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            assert terminate_backends(admin, name) >= 1
            calls = {
                "bfl get_result": ("bfl", lambda: client.get(f"/v1/get_result?id={uuid.uuid4()}")),
                "bfl submit": (
                    "bfl",
                    lambda: client.post("/v1/flux-dev", json={"prompt": "down", **SMALL}),
                ),
                "fal submit": (
                    "fal",
                    lambda: client.post(
                        "/queue/fal-ai/flux/dev",
                        json={"prompt": "down", "image_size": SMALL, "num_inference_steps": 1},
                    ),
                ),
                "openai generate": (
                    "openai",
                    lambda: client.post(
                        "/v1/images/generations",
                        json={"prompt": "down", "size": "256x256", "steps": 1},
                    ),
                ),
            }
            for label, (dialect, call) in calls.items():
                response, took = bounded(call)
                assert_database_down(response, dialect)
                assert took < 10, f"{label} took {took:.1f} s"
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        # Nothing was queued by the refused submits; the next ones run as before.
        with client.app.state.services.store.engine.connect() as conn:
            assert conn.execute(sa.select(jobs.c.id)).scalars().all() == [first.json()["id"]]
        after, _ = bounded(
            lambda: client.post("/v1/flux-dev", json={"prompt": "after", "seed": 2, **SMALL})
        )
        assert after.status_code == 200, after.text
        assert poll_result(client, after.json()["id"], timeout=30)["status"] == "Ready"


def test_racing_batch_claimers_take_every_job_once_in_batches_of_at_most_the_limit(pg_url):
    first = PostgresJobStore(pg_url)
    stores = [first] + [PostgresJobStore(pg_url, migrate=False) for _ in range(5)]
    try:
        ids = [f"job-{i:03d}" for i in range(120)]
        for job_id in ids:
            first.create(make_job(job_id))  # one batch key for all
        start = threading.Barrier(len(stores))
        batches: list[list[str]] = []
        errors: list[BaseException] = []

        def claim_batches(index: int, store: PostgresJobStore) -> None:
            try:
                start.wait(10)
                while batch := store.claim_batch(f"w{index}", ["tiny"], 30, limit=4):
                    batches.append([job.id for job in batch])
            except BaseException as exc:
                errors.append(exc)

        threads = [
            threading.Thread(target=claim_batches, args=(i, s), daemon=True)
            for i, s in enumerate(stores)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []
        assert all(1 <= len(batch) <= 4 for batch in batches)
        every_claim = [job_id for batch in batches for job_id in batch]
        assert sorted(every_claim) == ids  # each exactly once
        assert all(batch == sorted(batch) for batch in batches)  # queue order within a batch
    finally:
        for store in stores:
            store.close()


@pytest.mark.parametrize("skew", [-3600.0, 3600.0])
def test_leases_follow_the_database_clock_not_a_skewed_host(store, monkeypatch, skew):
    """A worker whose clock is an hour off neither loses its lease at once (behind) nor
    keeps a dead one for an hour (ahead): the lease is written and judged by PostgreSQL."""
    store.create(make_job(str(uuid.uuid4())))
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + skew)  # the worker's host
    job = store.claim("skewed-worker", ["tiny"], lease_seconds=30)
    assert store.heartbeat(job.id, job.attempt, lease_seconds=30)
    monkeypatch.setattr(time, "time", real_time)  # the sweeping host, on time
    assert store.requeue_expired(max_attempts=2) == []  # the lease still has ~30 s
    assert store.get(job.id).status is JobStatus.RUNNING
    with store.engine.connect() as conn:
        db_now = conn.execute(sa.text("SELECT extract(epoch from clock_timestamp())")).scalar()
    assert abs(store.get(job.id).lease_expires_at - (float(db_now) + 30)) < 5
