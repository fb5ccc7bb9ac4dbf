"""The job table as the API sees it: create (with limits), read, cancel, clean up."""

from __future__ import annotations

import json
import time

import sqlalchemy as sa

from fluxserve.domain import Job, JobStatus
from fluxserve.store.sqlbase import SqlStoreBase
from fluxserve.store.tables import (
    SubmitLimits,
    cancelled,
    charge,
    count_active,
    count_queued,
    jobs,
    queue_full,
    row_to_job,
    too_many_active,
)

_RUNNING = JobStatus.RUNNING.value


class SqlJobTable(SqlStoreBase):
    """Jobs as submitted and read: create, look up, cancel, forget, purge."""

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

    @staticmethod
    def _enforce(conn: sa.Connection, owner: str, limits: SubmitLimits) -> None:
        """Counts that include the job just inserted; over a limit, raise."""
        queue, active = limits.max_queue, limits.max_active
        if queue is not None and conn.execute(count_queued()).scalar_one() > queue:
            raise queue_full(queue)
        if active is not None and conn.execute(count_active(owner)).scalar_one() > active:
            raise too_many_active(active)
        if owner and limits.cost > 0:
            charge(conn, owner, limits.cost)

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
                .values(**cancelled(now))
            )
            conn.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.status == _RUNNING)
                .values(cancel_requested=True)
            )
            status = conn.execute(sa.select(jobs.c.status).where(jobs.c.id == job_id)).scalar()
        return JobStatus(status) if status is not None else None

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
