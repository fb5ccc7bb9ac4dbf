"""Read-only views for /metrics and `fluxserve status`: active counts, running and ended jobs."""

from __future__ import annotations

import json

import sqlalchemy as sa

from fluxserve.domain import Job, JobStatus
from fluxserve.store.base import EndedJob
from fluxserve.store.sqlbase import SqlStoreBase
from fluxserve.store.tables import jobs, row_to_job

_RUNNING = JobStatus.RUNNING.value


class SqlJobStats(SqlStoreBase):
    """Counts and pages of jobs for observability."""

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
                jobs.c.report,
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
                loras=json.loads(row.report or "{}").get("loras") or [],
            )
            for row in rows
        ]
