"""Webhook deliveries of ended jobs: claimed in turn by the dispatchers, fenced by attempt."""

from __future__ import annotations

import sqlalchemy as sa

from fluxserve.domain import Job, JobStatus
from fluxserve.store.sqlbase import SqlStoreBase
from fluxserve.store.tables import jobs, row_to_job


class SqlWebhookOutbox(SqlStoreBase):
    """The webhook outbox: the jobs table's webhook columns."""

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
