"""The queue as the workers see it: claims, leases fenced by attempt, ends, the sweep."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from fluxserve.domain import Job, JobReport, JobStatus
from fluxserve.store.sqlbase import SqlStoreBase
from fluxserve.store.states import sources_of
from fluxserve.store.tables import cancelled, ended, jobs, row_to_job

_RUNNING = JobStatus.RUNNING.value


def _states(target: JobStatus) -> list[str]:
    return [s.value for s in sources_of(target)]


class SqlWorkQueue(SqlStoreBase):
    """Claims and leases: every write a worker makes is fenced by the job's attempt."""

    def _claim_candidate(self, models: list[str], prefer: Sequence[str] = (),
                         patience: float = 0.0) -> sa.ScalarSelect:  # fmt: skip
        order: list[Any] = [jobs.c.seq]
        if prefer:
            # Jobs whose LoRAs this worker has loaded first (their set ends the batch key),
            # but never past a job that has waited ``patience``: no one starves.
            waited = jobs.c.created_at < time.time() - patience
            loaded = sa.or_(*(jobs.c.batch_key.endswith("|" + key) for key in prefer))
            order.insert(0, sa.case((waited, 0), (loaded, 1), else_=2))
        candidate = (
            sa.select(jobs.c.seq)
            .where(jobs.c.status == JobStatus.QUEUED.value, jobs.c.model.in_(models))
            .order_by(*order)
            .limit(1)
        )
        if self.shared:
            # Concurrent claimers skip rows another transaction holds rather than wait for
            # it (and then find it taken): each claim takes the oldest free job.
            candidate = candidate.with_for_update(skip_locked=True)
        return candidate.scalar_subquery()

    def _claimed(self, worker_id: str, lease_seconds: float) -> dict[str, Any]:
        """The values a claim writes: running, a new attempt, a fresh lease."""
        return {
            "status": _RUNNING,
            "worker_id": worker_id,
            "attempt": jobs.c.attempt + 1,
            "lease_expires_at": self.lease_clock() + lease_seconds,
            "started_at": time.time(),
            "progress": 0.0,
            "preview": None,  # an earlier attempt's
            "batch_size": 1,  # a batch's worker writes its size once it is gathered
        }

    def claim(self, worker_id: str, models: list[str], lease_seconds: float,
              prefer: Sequence[str] = (), patience: float = 0.0) -> Job | None:  # fmt: skip
        stmt = (
            jobs.update()
            .where(jobs.c.seq == self._claim_candidate(models, prefer, patience))
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

    def set_progress(
        self, job_id: str, attempt: int, progress: float, preview: dict[str, Any] | None = None
    ) -> bool:
        """Write a running job's progress and, when given, its latest preview (else the
        last one stays)."""
        if preview is None:
            return self._update_running(job_id, attempt, progress=progress)
        return self._update_running(job_id, attempt, progress=progress,
                                    preview=json.dumps(preview))  # fmt: skip

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
            preview=None,
            result_keys=json.dumps(result_keys),
            report=json.dumps((report or JobReport()).to_dict()),
            finished_at=time.time(),
            lease_expires_at=None,
        )

    def release(self, job_id: str, attempt: int, count_attempt: bool = True) -> bool:
        """Put a running job back in the queue (its worker could not finish it, e.g. storage
        was unreachable); the next claim is a new attempt. ``count_attempt=False`` (a
        shutdown stopped it) hands the attempt back: the next claim has the same number,
        so the job keeps every try ``max_attempts`` gives it. The releasing worker writes
        nothing after this, so the repeated number fences nothing it could still write."""
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
                        preview=None,
                        attempt=attempt if count_attempt else attempt - 1,
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
            preview=None,
        )

    def fail(self, job_id: str, attempt: int | None, code: str, message: str) -> bool:
        values = ended(JobStatus.FAILED, code, message)
        if attempt is not None:
            return self._update_running(job_id, attempt, **values)
        stmt = (
            jobs.update()
            .where(jobs.c.id == job_id, jobs.c.status == JobStatus.QUEUED.value)
            .values(**values)
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def is_cancel_requested(self, job_id: str) -> bool:
        with self.engine.connect() as conn:
            stmt = sa.select(jobs.c.cancel_requested).where(jobs.c.id == job_id)
            return bool(conn.execute(stmt).scalar())

    def cancel_running(self, job_id: str, attempt: int) -> bool:
        return self._update_running(job_id, attempt, **cancelled())

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
        lost_message = (
            f"The worker stopped while generating this job {max_attempts} times; "
            "it was not retried again."
        )
        with self.engine.begin() as conn:
            # A job whose cancel was asked for is not retried: it ends cancelled.
            were_cancelled = conn.execute(
                jobs.update()
                .where(expired, jobs.c.cancel_requested.is_(True))
                .values(**cancelled(now))
                .returning(*jobs.c)
            ).all()
            failed = conn.execute(
                jobs.update()
                .where(expired, jobs.c.attempt >= max_attempts)
                .values(**ended(JobStatus.FAILED, "worker_lost", lost_message, now))
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
                    preview=None,
                )
                .returning(*jobs.c)
            ).all()
            if requeued:
                self._announce(conn)
        return [row_to_job(r) for r in (*were_cancelled, *failed, *requeued)]

    def fail_queued(self, model: str, queued_before: float, code: str, message: str) -> list[Job]:
        waiting = (
            (jobs.c.status == JobStatus.QUEUED.value)
            & (jobs.c.model == model)
            & (jobs.c.created_at < queued_before)
        )
        with self.engine.begin() as conn:
            rows = conn.execute(
                jobs.update().where(waiting).values(**ended(JobStatus.FAILED, code, message))
                .returning(*jobs.c)
            ).all()  # fmt: skip
        return [row_to_job(row) for row in rows]

    def set_batch_size(self, worker_id: str, job_ids: list[str], size: int) -> int:
        """Record that these running jobs of ``worker_id`` run as one batch of ``size``."""
        stmt = (
            jobs.update()
            .where(jobs.c.id.in_(job_ids), jobs.c.worker_id == worker_id, jobs.c.status == _RUNNING)
            .values(batch_size=size)
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount
