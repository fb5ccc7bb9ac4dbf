"""The job table as the API sees it: create (with limits), read, cancel, clean up."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from fluxserve.domain import Job, JobStatus
from fluxserve.store.group_commit import GroupCommit
from fluxserve.store.sqlbase import SqlStoreBase
from fluxserve.store.tables import (
    COUNT_ACTIVE,
    COUNT_QUEUED,
    SubmitLimits,
    cancelled,
    charge,
    jobs,
    queue_full,
    row_to_job,
    too_many_active,
)

_RUNNING = JobStatus.RUNNING.value
# Built once: building a statement per call cost more than running it (SQLite).
_INSERT = jobs.insert().returning(jobs.c.seq)
_BY_ID = sa.select(jobs).where(jobs.c.id == sa.bindparam("id"))
_BY_IDEMPOTENCY_KEY = sa.select(jobs).where(
    jobs.c.owner == sa.bindparam("owner"), jobs.c.idempotency_key == sa.bindparam("key")
)
CREATE_GROUP_LIMIT = 64  # jobs written in one transaction at most


@dataclass
class _Create:
    """One job to insert (its row's values), with the limits it is created under."""

    job: Job
    limits: SubmitLimits | None
    values: dict[str, Any]

    @property
    def queue_limits(self) -> SubmitLimits | None:
        """The limits to enforce: a job created ended (refused) takes no place."""
        return self.limits if self.job.status is JobStatus.QUEUED else None


class SqlJobTable(SqlStoreBase):
    """Jobs as submitted and read: create, look up, cancel, forget, purge."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        # Concurrent creates share transactions (a group commit; see store/group_commit).
        self._creates: GroupCommit[_Create, int] = GroupCommit(
            self._insert_group, CREATE_GROUP_LIMIT
        )

    # -- reads ---------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        with self.engine.connect() as conn:
            row = conn.execute(_BY_ID, {"id": job_id}).first()
        return row_to_job(row) if row else None

    def find_idempotent(self, owner: str, idempotency_key: str) -> Job | None:
        """The job ``owner`` submitted with ``idempotency_key``, if any."""
        with self.engine.connect() as conn:
            row = conn.execute(_BY_IDEMPOTENCY_KEY, {"owner": owner, "key": idempotency_key})
            row = row.first()
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
        or the server past ``max_queue`` queued ones, and charged its cost (PaymentRequired
        when its key's budget cannot cover it): checked in the inserting transaction, so
        concurrent submits cannot all slip past (see ``_serialise_limited_creates``).

        Creates that arrive while another is being written are written together, in one
        transaction, each job in a savepoint of its own: one job's refusal (or its clash
        with an earlier Idempotency-Key) undoes only its own insert and charge."""
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
        seq = self._creates.run(_Create(job, limits, values))
        job.seq, job.created_at = seq, values["created_at"]
        return job

    def _insert_group(self, group: Sequence[_Create]) -> list[int | BaseException]:
        """Insert a group of jobs in one transaction: each one's seq, or what refused it.
        A group of one needs no savepoint: its refusal rolls the transaction back."""
        outcomes: list[int | BaseException] = []
        with self.engine.begin() as conn:
            self._begin_write(conn)
            if any(create.queue_limits is not None for create in group):
                self._serialise_limited_creates(conn)
            if len(group) == 1:
                outcomes.append(self._insert(conn, group[0]))
            else:
                for create in group:
                    try:
                        with conn.begin_nested():
                            outcomes.append(self._insert(conn, create))
                    except Exception as exc:  # a refusal, or an Idempotency-Key clash
                        outcomes.append(exc)
            if any(c.job.status is JobStatus.QUEUED and isinstance(o, int)
                   for c, o in zip(group, outcomes, strict=True)):  # fmt: skip
                self._announce(conn)
        return outcomes

    def _insert(self, conn: sa.Connection, create: _Create) -> int:
        """Insert one job (and enforce its limits); its seq."""
        seq = conn.execute(_INSERT, create.values).scalar_one()
        if (limits := create.queue_limits) is not None:
            self._enforce(conn, create.job.owner, limits)  # raises: the insert is undone
        return seq

    @staticmethod
    def _enforce(conn: sa.Connection, owner: str, limits: SubmitLimits) -> None:
        """Counts that include the job just inserted; over a limit, raise."""
        queue, active = limits.max_queue, limits.max_active
        if queue is not None and conn.execute(COUNT_QUEUED).scalar_one() > queue:
            raise queue_full(queue)
        key = {"owner": owner}
        if active is not None and conn.execute(COUNT_ACTIVE, key).scalar_one() > active:
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
