"""JobStore over SQLAlchemy Core; the SQL here is shared by the SQLite and PostgreSQL stores."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from fluxserve.domain import GenerationRequest, Job, JobReport, JobStatus, Webhook
from fluxserve.errors import ServerBusy, TooManyRequests
from fluxserve.store.base import EndedJob, WorkerRecord
from fluxserve.store.states import sources_of

metadata = sa.MetaData()

jobs = sa.Table(
    "jobs",
    metadata,
    # seq orders the queue: submission order, assigned by the database.
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("request", sa.Text, nullable=False),
    sa.Column("progress", sa.Float, nullable=False, default=0.0),
    sa.Column("attempt", sa.Integer, nullable=False, default=0),
    sa.Column("worker_id", sa.String(200)),
    sa.Column("lease_expires_at", sa.Float),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("result_keys", sa.Text),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text),
    # Set by a cancel of a running job; the worker polls it between steps.
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    # JSON: safety verdicts, the rewritten prompt, notes (domain.JobReport).
    sa.Column("report", sa.Text),
    # GenerationRequest.batch_key: queued jobs that can share a batch (claim_batch).
    sa.Column("batch_key", sa.String(400)),
    # The API key that made the job ("" with --auth off); only it may read the job.
    sa.Column("owner", sa.String(32), nullable=False, default=""),
    # A client's Idempotency-Key: a retried submit with the same key gets the same job.
    sa.Column("idempotency_key", sa.String(200)),
    sa.Column("batch_size", sa.Integer),  # how many jobs ran in its batch
    # Webhook delivery: JSON {"url", "secret", "dialect"}; state pending/delivered/failed.
    sa.Column("webhook", sa.Text),
    sa.Column("webhook_state", sa.String(16)),
    sa.Column("webhook_attempts", sa.Integer, nullable=False, default=0),
    sa.Column("webhook_next_at", sa.Float),
    sa.Column("webhook_error", sa.Text),
    sa.Index("ix_jobs_claim", "status", "model", "seq"),
    sa.Index("ix_jobs_batch", "status", "batch_key", "seq"),
    sa.Index("ix_jobs_owner", "owner", "status"),
    sa.Index("ux_jobs_idempotency", "owner", "idempotency_key", unique=True),
    sa.Index("ix_jobs_webhook", "webhook_state", "webhook_next_at"),
    # /metrics reads the jobs that ended since its last scrape (migration 0004).
    sa.Index("ix_jobs_finished", "finished_at", "seq"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # public: named in logs and the CLI
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False, unique=True),  # sha256 of the secret
    sa.Column("prefix", sa.String(16), nullable=False),  # the secret's first characters
    sa.Column("max_active", sa.Integer, nullable=False),
    sa.Column("rate_per_minute", sa.Float),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
)

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("models", sa.Text, nullable=False),  # JSON list
    sa.Column("device", sa.String(64), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
    sa.Column("current_job", sa.String(64)),
    sa.Column("gpu_memory_bytes", sa.BigInteger),
    sa.Column("gpu_memory_peak_bytes", sa.BigInteger),
)

_RUNNING = JobStatus.RUNNING.value
ACTIVE_RETRY_AFTER = 5  # seconds: a job of the key has likely finished by then
BUSY_RETRY_AFTER = 10


def count_queued() -> sa.Select:
    """Queued jobs of every key and model."""
    return (
        sa.select(sa.func.count()).select_from(jobs).where(jobs.c.status == JobStatus.QUEUED.value)
    )


def count_active(owner: str) -> sa.Select:
    """Queued and running jobs of one key."""
    active = jobs.c.status.in_([JobStatus.QUEUED.value, _RUNNING])
    return sa.select(sa.func.count()).select_from(jobs).where(jobs.c.owner == owner, active)


def queue_full(max_queue: int) -> ServerBusy:
    return ServerBusy(f"The server's queue is full ({max_queue} jobs); retry later.",
                      BUSY_RETRY_AFTER)  # fmt: skip


def too_many_active(max_active: int) -> TooManyRequests:
    return TooManyRequests(
        f"This API key has {max_active} active tasks, its limit; wait until one finishes.",
        ACTIVE_RETRY_AFTER,
    )


@dataclass(frozen=True)
class SubmitLimits:
    """What a new queued job may not exceed: its key's active jobs, the server's queue."""

    max_active: int | None = None
    max_queue: int | None = None


def _states(target: JobStatus) -> list[str]:
    return [s.value for s in sources_of(target)]


def row_to_job(row: Any) -> Job:
    m = row._mapping
    return Job(
        id=m["id"],
        seq=m["seq"],
        request=GenerationRequest.from_dict(json.loads(m["request"])),
        status=JobStatus(m["status"]),
        progress=m["progress"],
        attempt=m["attempt"],
        worker_id=m["worker_id"],
        lease_expires_at=m["lease_expires_at"],
        created_at=m["created_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        result_keys=json.loads(m["result_keys"]) if m["result_keys"] else [],
        error_code=m["error_code"],
        error_message=m["error_message"],
        cancel_requested=bool(m["cancel_requested"]),
        report=JobReport.from_dict(json.loads(m["report"]) if m["report"] else None),
        owner=m["owner"],
        idempotency_key=m["idempotency_key"],
        batch_size=m["batch_size"],
        webhook=Webhook.from_dict(json.loads(m["webhook"]) if m["webhook"] else None),
        webhook_state=m["webhook_state"],
        webhook_attempts=m["webhook_attempts"],
        webhook_error=m["webhook_error"],
    )


class SqlJobStore:
    """JobStore on any SQLAlchemy engine whose dialect supports UPDATE ... RETURNING."""

    # Whether workers of other processes and hosts share this store (PostgreSQL): then no
    # one may assume a running job's worker is gone just because it restarted.
    shared = False

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def ping(self) -> bool:
        """Whether the database answers (for readiness)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError:
            return False
        return True

    def _announce(self, conn: sa.Connection) -> None:
        """Tell idle workers elsewhere that jobs are queued (PostgreSQL: NOTIFY)."""

    def listen(self, on_wake: Callable[[], None], stop: Callable[[], bool]) -> None:
        """Call ``on_wake`` whenever another process queues jobs, until ``stop()``; returns
        at once where wake-ups are in-process only (SQLite)."""

    def create_schema(self) -> None:
        """Migrate the database to the current schema (store/migrations)."""
        from fluxserve.store.migrate import migrate

        migrate(self.engine)

    # -- reads ---------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.id == job_id)).first()
        return row_to_job(row) if row else None

    def find_idempotent(self, owner: str, idempotency_key: str) -> Job | None:
        """The job ``owner`` submitted with ``idempotency_key``, if any."""
        stmt = sa.select(jobs).where(
            jobs.c.owner == owner, jobs.c.idempotency_key == idempotency_key
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        return row_to_job(row) if row else None

    def queue_position(self, job: Job) -> int | None:
        if job.status != JobStatus.QUEUED:
            return None
        ahead = (
            sa.select(sa.func.count())
            .select_from(jobs)
            .where(
                jobs.c.status == JobStatus.QUEUED.value,
                jobs.c.model == job.model,
                jobs.c.seq < job.seq,
            )
        )
        with self.engine.connect() as conn:
            return int(conn.execute(ahead).scalar_one())

    def queued_counts(self) -> dict[str, int]:
        """Queued jobs per model."""
        stmt = (
            sa.select(jobs.c.model, sa.func.count())
            .where(jobs.c.status == JobStatus.QUEUED.value)
            .group_by(jobs.c.model)
        )
        with self.engine.connect() as conn:
            return {model: int(count) for model, count in conn.execute(stmt)}

    # -- writes --------------------------------------------------------------------------
    def create(self, job: Job, limits: SubmitLimits | None = None) -> Job:
        """Insert ``job``. With ``limits`` a queued job is refused (TooManyRequests,
        ServerBusy) when it would take its owner past ``max_active`` queued + running jobs
        or the server past ``max_queue`` queued ones: checked in the inserting transaction,
        so concurrent submits cannot all slip past (see ``_serialise_limited_creates``)."""
        values = {
            "id": job.id,
            "model": job.model,
            "status": job.status.value,
            "request": json.dumps(job.request.to_dict()),
            "progress": job.progress,
            "attempt": job.attempt,
            "created_at": job.created_at or time.time(),
            "cancel_requested": False,
            "report": json.dumps(job.report.to_dict()),
            "batch_key": job.request.batch_key,
            # A job refused before it was queued is created ended (request moderated).
            "finished_at": job.finished_at,
            "error_code": job.error_code,
            "error_message": job.error_message,
            "owner": job.owner,
            "idempotency_key": job.idempotency_key,
            "webhook": json.dumps(job.webhook.to_dict()) if job.webhook else None,
            # A job created ended (refused) is announced at once, like any other end.
            "webhook_state": "pending" if job.webhook else None,
            "webhook_attempts": 0,
        }
        limited = limits is not None and job.status is JobStatus.QUEUED
        with self.engine.begin() as conn:
            if limited:
                self._serialise_limited_creates(conn)
            seq = conn.execute(jobs.insert().values(**values).returning(jobs.c.seq)).scalar_one()
            if limited:
                self._enforce(conn, job.owner, limits)  # raises: the insert is rolled back
            if job.status is JobStatus.QUEUED:
                self._announce(conn)
        job.seq, job.created_at = seq, values["created_at"]
        return job

    def _serialise_limited_creates(self, conn: sa.Connection) -> None:
        """Make limited creates take turns. SQLite needs nothing: the insert takes the
        database's write lock before the counts run, so the next creator waits and then
        counts this job. PostgreSQL overrides this with a transaction-scoped lock."""

    @staticmethod
    def _enforce(conn: sa.Connection, owner: str, limits: SubmitLimits) -> None:
        """Counts that include the job just inserted; over a limit, raise."""
        queue, active = limits.max_queue, limits.max_active
        if queue is not None and conn.execute(count_queued()).scalar_one() > queue:
            raise queue_full(queue)
        if active is not None and conn.execute(count_active(owner)).scalar_one() > active:
            raise too_many_active(active)

    def _claim_candidate(self, models: list[str]) -> sa.ScalarSelect:
        candidate = (
            sa.select(jobs.c.seq)
            .where(jobs.c.status == JobStatus.QUEUED.value, jobs.c.model.in_(models))
            .order_by(jobs.c.seq)
            .limit(1)
        )
        if self.shared:
            # Concurrent claimers skip rows another transaction holds rather than wait for
            # it (and then find it taken): each claim takes the oldest free job.
            candidate = candidate.with_for_update(skip_locked=True)
        return candidate.scalar_subquery()

    def lease_clock(self) -> float | sa.ColumnElement[float]:
        """The clock leases are written and judged by. One host owns a SQLite store, so its
        clock serves; PostgreSQL's store overrides this with the database's own clock, so
        hosts whose clocks disagree never expire each other's leases early."""
        return time.time()

    def _claimed(self, worker_id: str, lease_seconds: float) -> dict[str, Any]:
        """The values a claim writes: running, a new attempt, a fresh lease."""
        return {
            "status": _RUNNING,
            "worker_id": worker_id,
            "attempt": jobs.c.attempt + 1,
            "lease_expires_at": self.lease_clock() + lease_seconds,
            "started_at": time.time(),
            "progress": 0.0,
            "batch_size": 1,  # a batch's worker writes its size once it is gathered
        }

    def claim(self, worker_id: str, models: list[str], lease_seconds: float) -> Job | None:
        stmt = (
            jobs.update()
            .where(jobs.c.seq == self._claim_candidate(models))
            .where(jobs.c.status.in_(_states(JobStatus.RUNNING)))
            .values(**self._claimed(worker_id, lease_seconds))
            .returning(*jobs.c)
        )
        with self.engine.begin() as conn:
            row = conn.execute(stmt).first()
        return row_to_job(row) if row else None

    def claim_batch(
        self, worker_id: str, models: list[str], lease_seconds: float, limit: int
    ) -> list[Job]:
        """The oldest queued job of ``models`` and up to ``limit - 1`` more queued jobs that
        share its batch key, in queue order, all claimed (each with its own lease)."""
        first = self.claim(worker_id, models, lease_seconds)
        if first is None:
            return []
        return [first, *self.claim_companions(worker_id, first, models, lease_seconds, limit - 1)]

    def claim_companions(
        self, worker_id: str, first: Job, models: list[str], lease_seconds: float, limit: int
    ) -> list[Job]:
        """Up to ``limit`` queued jobs sharing ``first``'s batch key, claimed, in order."""
        if limit < 1:
            return []
        companions = (
            sa.select(jobs.c.seq)
            .where(
                jobs.c.status == JobStatus.QUEUED.value,
                jobs.c.batch_key == first.request.batch_key,
                jobs.c.model.in_(models),
            )
            .order_by(jobs.c.seq)
            .limit(limit)
        )
        if self.shared:
            companions = companions.with_for_update(skip_locked=True)
        # A CTE, not "seq IN (subquery)": PostgreSQL may run such a subquery again for
        # each row it checks, and with SKIP LOCKED that claims more than ``limit``.
        picked = companions.cte("picked")
        stmt = (
            jobs.update()
            .where(jobs.c.seq == picked.c.seq)
            .where(jobs.c.status == JobStatus.QUEUED.value)
            .values(**self._claimed(worker_id, lease_seconds))
            .returning(*jobs.c)
        )
        with self.engine.begin() as conn:
            rows = conn.execute(stmt).all()
        return sorted((row_to_job(r) for r in rows), key=lambda job: job.seq or 0)

    def _update_running(self, job_id: str, attempt: int, **values: Any) -> bool:
        stmt = (
            jobs.update()
            .where(jobs.c.id == job_id, jobs.c.attempt == attempt, jobs.c.status == _RUNNING)
            .values(**values)
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def heartbeat(self, job_id: str, attempt: int, lease_seconds: float) -> bool:
        expires = self.lease_clock() + lease_seconds
        return self._update_running(job_id, attempt, lease_expires_at=expires)

    def set_progress(self, job_id: str, attempt: int, progress: float) -> bool:
        return self._update_running(job_id, attempt, progress=progress)

    def complete(
        self,
        job_id: str,
        attempt: int,
        result_keys: list[str],
        report: JobReport | None = None,
        status: JobStatus = JobStatus.SUCCEEDED,
    ) -> bool:
        """End a running job with its images: SUCCEEDED, or CONTENT_MODERATED when the
        output check blocked every image (their black stand-ins are still stored)."""
        moderated = status is JobStatus.CONTENT_MODERATED
        return self._update_running(
            job_id,
            attempt,
            status=status.value,
            error_code="content_moderated" if moderated else None,
            error_message="The generated image was blocked by the content policy."
            if moderated
            else None,
            progress=1.0,
            result_keys=json.dumps(result_keys),
            report=json.dumps((report or JobReport()).to_dict()),
            finished_at=time.time(),
            lease_expires_at=None,
        )

    def release(self, job_id: str, attempt: int) -> bool:
        """Put a running job back in the queue (its worker could not finish it, e.g. storage
        was unreachable); the next claim is a new attempt."""
        with self.engine.begin() as conn:
            released = (
                conn.execute(
                    jobs.update()
                    .where(
                        jobs.c.id == job_id, jobs.c.attempt == attempt, jobs.c.status == _RUNNING
                    )
                    .values(
                        status=JobStatus.QUEUED.value,
                        worker_id=None,
                        lease_expires_at=None,
                        progress=0.0,
                    )
                ).rowcount
                == 1
            )
            if released:
                self._announce(conn)
        return released

    def moderate(self, job_id: str, attempt: int, report: JobReport, message: str) -> bool:
        """End a running job REQUEST_MODERATED: a check refused its prompt or an input."""
        return self._update_running(
            job_id,
            attempt,
            status=JobStatus.REQUEST_MODERATED.value,
            error_code="request_moderated",
            error_message=message,
            report=json.dumps(report.to_dict()),
            finished_at=time.time(),
            lease_expires_at=None,
        )

    def fail(self, job_id: str, attempt: int | None, code: str, message: str) -> bool:
        values = {
            "status": JobStatus.FAILED.value,
            "error_code": code,
            "error_message": message,
            "finished_at": time.time(),
            "lease_expires_at": None,
        }
        if attempt is not None:
            return self._update_running(job_id, attempt, **values)
        stmt = (
            jobs.update()
            .where(jobs.c.id == job_id, jobs.c.status == JobStatus.QUEUED.value)
            .values(**values)
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def request_cancel(self, job_id: str) -> JobStatus | None:
        """Cancel a queued job now, or ask the worker of a running one to stop.

        Returns the job's status afterwards (None: no such job). A running job stays
        running until its worker notices, at its next step.
        """
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.status == JobStatus.QUEUED.value)
                .values(
                    status=JobStatus.CANCELLED.value,
                    finished_at=now,
                    error_code="cancelled",
                    error_message="The request was cancelled.",
                )
            )
            conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.status == _RUNNING)
                .values(cancel_requested=True)
            )
            status = conn.execute(sa.select(jobs.c.status).where(jobs.c.id == job_id)).scalar()
        return JobStatus(status) if status is not None else None

    def is_cancel_requested(self, job_id: str) -> bool:
        with self.engine.connect() as conn:
            stmt = sa.select(jobs.c.cancel_requested).where(jobs.c.id == job_id)
            return bool(conn.execute(stmt).scalar())

    def cancel_running(self, job_id: str, attempt: int) -> bool:
        return self._update_running(
            job_id,
            attempt,
            status=JobStatus.CANCELLED.value,
            error_code="cancelled",
            error_message="The request was cancelled.",
            finished_at=time.time(),
            lease_expires_at=None,
        )

    def forget_results(self, job_id: str, result_keys: list[str]) -> bool:
        """Drop a job's result keys once its images were handed over inline and deleted;
        only the caller whose keys still match wins, so one delivery happens."""
        stmt = (
            jobs.update()
            .where(jobs.c.id == job_id, jobs.c.result_keys == json.dumps(result_keys))
            .values(result_keys=json.dumps([]))
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def expire_leases(self, worker_id: str) -> int:
        stmt = (
            jobs.update()
            .where(jobs.c.worker_id == worker_id, jobs.c.status == _RUNNING)
            .values(lease_expires_at=0.0)
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount

    def expire_all_leases(self) -> int:
        """End every running lease: only for a store that a single server owns (SQLite)."""
        stmt = jobs.update().where(jobs.c.status == _RUNNING).values(lease_expires_at=0.0)
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount

    def requeue_expired(self, max_attempts: int, now: float | None = None) -> list[Job]:
        clock = self.lease_clock() if now is None else now
        now = time.time() if now is None else now  # for finished_at: the host's, as always
        expired = (jobs.c.status == _RUNNING) & (jobs.c.lease_expires_at < clock)
        # A read first: the sweep runs twice a second and should not take the write lock
        # (which progress updates need) when there is nothing to do, as is usual.
        with self.engine.connect() as conn:
            if conn.execute(sa.select(jobs.c.seq).where(expired).limit(1)).first() is None:
                return []
        with self.engine.begin() as conn:
            # A job whose cancel was asked for is not retried: it ends cancelled.
            cancelled = conn.execute(
                jobs.update()
                .where(expired, jobs.c.cancel_requested.is_(True))
                .values(
                    status=JobStatus.CANCELLED.value,
                    error_code="cancelled",
                    error_message="The request was cancelled.",
                    finished_at=now,
                    lease_expires_at=None,
                )
                .returning(*jobs.c)
            ).all()
            failed = conn.execute(
                jobs.update()
                .where(expired, jobs.c.attempt >= max_attempts)
                .values(
                    status=JobStatus.FAILED.value,
                    error_code="worker_lost",
                    error_message=(
                        f"The worker stopped while generating this job {max_attempts} times; "
                        "it was not retried again."
                    ),
                    finished_at=now,
                    lease_expires_at=None,
                )
                .returning(*jobs.c)
            ).all()
            requeued = conn.execute(
                jobs.update()
                .where(expired, jobs.c.attempt < max_attempts)
                .values(
                    status=JobStatus.QUEUED.value,
                    worker_id=None,
                    lease_expires_at=None,
                    progress=0.0,
                )
                .returning(*jobs.c)
            ).all()
            if requeued:
                self._announce(conn)
        return [row_to_job(r) for r in (*cancelled, *failed, *requeued)]

    def ended_before(self, finished_before: float, limit: int = 500) -> list[str]:
        """Ids of up to ``limit`` jobs that ended before ``finished_before``, oldest first;
        not those whose webhook is still being delivered (its retries end within a bound)."""
        ended = [s.value for s in JobStatus if s.is_terminal]
        delivering = jobs.c.webhook_state == "pending"
        stmt = (
            sa.select(jobs.c.id)
            .where(jobs.c.status.in_(ended), jobs.c.finished_at < finished_before)
            .where(sa.or_(jobs.c.webhook_state.is_(None), sa.not_(delivering)))
            .order_by(jobs.c.seq)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(stmt).scalars())

    def delete_jobs(self, job_ids: list[str]) -> int:
        """Delete these jobs' rows (only ended ones: a live job is never deleted)."""
        ended = [s.value for s in JobStatus if s.is_terminal]
        stmt = jobs.delete().where(jobs.c.id.in_(job_ids), jobs.c.status.in_(ended))
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount

    def purge_ended(self, finished_before: float, limit: int = 500) -> list[str]:
        """Delete up to ``limit`` jobs that ended before ``finished_before``; their ids."""
        ended = [s.value for s in JobStatus if s.is_terminal]
        with self.engine.begin() as conn:
            ids = list(
                conn.execute(
                    sa.select(jobs.c.id)
                    .where(jobs.c.status.in_(ended), jobs.c.finished_at < finished_before)
                    .order_by(jobs.c.seq)
                    .limit(limit)
                ).scalars()
            )
            if ids:
                conn.execute(jobs.delete().where(jobs.c.id.in_(ids)))
        return ids

    # -- webhook delivery ----------------------------------------------------------------
    @staticmethod
    def _webhook_due(now: float) -> sa.ColumnElement[bool]:
        """Ended jobs whose webhook is still to be delivered and whose next try is due."""
        ended = [s.value for s in JobStatus if s.is_terminal]
        return sa.and_(
            jobs.c.webhook_state == "pending",
            jobs.c.status.in_(ended),
            sa.or_(jobs.c.webhook_next_at.is_(None), jobs.c.webhook_next_at <= now),
        )

    def due_webhooks(self, now: float, limit: int, hold_seconds: float) -> list[Job]:
        """Claim up to ``limit`` webhook deliveries that are due at ``now``.

        Each claimed job's ``webhook_attempts`` grows by one (the attempt being made: the
        fencing token of ``record_webhook``), and its ``webhook_next_at`` moves to ``now +
        hold_seconds``: no other dispatcher (another API replica) takes it while this one is
        delivering, and if this one dies mid-delivery the attempt is made again after that.
        """
        if limit < 1:
            return []
        due = self._webhook_due(now)
        # A read first: every replica polls twice a second, and should not take the write
        # lock when nothing is due, as is usual.
        with self.engine.connect() as conn:
            if conn.execute(sa.select(jobs.c.seq).where(due).limit(1)).first() is None:
                return []
        picked = sa.select(jobs.c.seq).where(due).order_by(jobs.c.seq).limit(limit)
        if self.shared:  # concurrent dispatchers skip rows another one is claiming
            picked = picked.with_for_update(skip_locked=True)
        picked_cte = picked.cte("picked")  # a CTE, as in claim_companions
        stmt = (
            jobs.update()
            .where(jobs.c.seq == picked_cte.c.seq)
            .where(due)  # checked again on the row as it is when updated
            .values(
                webhook_attempts=jobs.c.webhook_attempts + 1,
                webhook_next_at=now + hold_seconds,
            )
            .returning(*jobs.c)
        )
        with self.engine.begin() as conn:
            rows = conn.execute(stmt).all()
        return sorted((row_to_job(r) for r in rows), key=lambda job: job.seq or 0)

    def record_webhook(
        self,
        job_id: str,
        attempts: int,
        state: str,
        next_at: float | None,
        error: str | None,
    ) -> bool:
        """Write the outcome of delivery attempt number ``attempts``: ``state`` pending
        (retry at ``next_at``), delivered or failed, and the last ``error``. Fenced: False
        when the attempt is no longer the job's latest (another dispatcher took over)."""
        stmt = (
            jobs.update()
            .where(
                jobs.c.id == job_id,
                jobs.c.webhook_state == "pending",
                jobs.c.webhook_attempts == attempts,
            )
            .values(webhook_state=state, webhook_next_at=next_at, webhook_error=error)
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    # -- observability: batch sizes, counts, ended jobs, workers ----------------------------
    def set_batch_size(self, worker_id: str, job_ids: list[str], size: int) -> int:
        """Record that these running jobs of ``worker_id`` run as one batch of ``size``."""
        stmt = (
            jobs.update()
            .where(jobs.c.id.in_(job_ids), jobs.c.worker_id == worker_id, jobs.c.status == _RUNNING)
            .values(batch_size=size)
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount

    def active_counts(self) -> dict[str, dict[str, int]]:
        """Queued and running jobs per model: {model: {"queued": n, "running": m}}."""
        active = [JobStatus.QUEUED.value, _RUNNING]
        stmt = (
            sa.select(jobs.c.model, jobs.c.status, sa.func.count())
            .where(jobs.c.status.in_(active))
            .group_by(jobs.c.model, jobs.c.status)
        )
        counts: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for model, status, count in conn.execute(stmt):
                counts.setdefault(model, {"queued": 0, "running": 0})[status] = int(count)
        return counts

    def running_jobs(self, limit: int = 100) -> list[Job]:
        """Up to ``limit`` running jobs, longest running first."""
        stmt = (
            sa.select(jobs)
            .where(jobs.c.status == _RUNNING)
            .order_by(jobs.c.started_at, jobs.c.seq)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [row_to_job(row) for row in conn.execute(stmt)]

    def ended_since(
        self, finished_at: float, after_seq: int = 0, limit: int = 1000
    ) -> list[EndedJob]:
        """Up to ``limit`` ended jobs after (``finished_at``, ``after_seq``), in that order:
        a keyset page over the ix_jobs_finished index."""
        ended = [s.value for s in JobStatus if s.is_terminal]
        later = (jobs.c.finished_at > finished_at) | (
            (jobs.c.finished_at == finished_at) & (jobs.c.seq > after_seq)
        )
        stmt = (
            sa.select(
                jobs.c.seq,
                jobs.c.id,
                jobs.c.model,
                jobs.c.status,
                jobs.c.request,
                jobs.c.created_at,
                jobs.c.started_at,
                jobs.c.finished_at,
                jobs.c.batch_size,
            )
            .where(jobs.c.finished_at >= finished_at, later, jobs.c.status.in_(ended))
            .order_by(jobs.c.finished_at, jobs.c.seq)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [
            EndedJob(
                seq=row.seq,
                id=row.id,
                model=row.model,
                status=JobStatus(row.status),
                steps=int(json.loads(row.request).get("steps") or 0),
                created_at=row.created_at,
                started_at=row.started_at,
                finished_at=row.finished_at,
                batch_size=row.batch_size,
            )
            for row in rows
        ]

    def register_worker(
        self, worker_id: str, host: str, models: list[str], device: str, now: float | None = None
    ) -> None:
        """Add (or replace) this worker's row in the workers table."""
        now = time.time() if now is None else now
        with self.engine.begin() as conn:
            conn.execute(workers.delete().where(workers.c.id == worker_id))
            conn.execute(
                workers.insert().values(
                    id=worker_id,
                    host=host,
                    models=json.dumps(models),
                    device=device,
                    started_at=now,
                    last_seen=now,
                )
            )

    def worker_heartbeat(
        self,
        worker_id: str,
        current_job: str | None,
        gpu_memory_bytes: int | None = None,
        gpu_memory_peak_bytes: int | None = None,
        now: float | None = None,
    ) -> bool:
        """Refresh a worker's row; False when it has none (purged: register again)."""
        stmt = (
            workers.update()
            .where(workers.c.id == worker_id)
            .values(
                last_seen=time.time() if now is None else now,
                current_job=current_job,
                gpu_memory_bytes=gpu_memory_bytes,
                gpu_memory_peak_bytes=gpu_memory_peak_bytes,
            )
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def remove_worker(self, worker_id: str) -> bool:
        with self.engine.begin() as conn:
            return conn.execute(workers.delete().where(workers.c.id == worker_id)).rowcount == 1

    def list_workers(self) -> list[WorkerRecord]:
        """Every registered worker, by host and id."""
        stmt = sa.select(workers).order_by(workers.c.host, workers.c.id)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).all()
        return [
            WorkerRecord(
                id=row.id,
                host=row.host,
                models=json.loads(row.models),
                device=row.device,
                started_at=row.started_at,
                last_seen=row.last_seen,
                current_job=row.current_job,
                gpu_memory_bytes=row.gpu_memory_bytes,
                gpu_memory_peak_bytes=row.gpu_memory_peak_bytes,
            )
            for row in rows
        ]

    def purge_workers(self, seen_before: float) -> int:
        """Delete the rows of workers not seen since ``seen_before`` (gone without a word)."""
        with self.engine.begin() as conn:
            return conn.execute(workers.delete().where(workers.c.last_seen < seen_before)).rowcount

    def close(self) -> None:
        self.engine.dispose()
