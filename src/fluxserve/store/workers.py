"""The workers table: which worker processes run, where, and what they hold."""

from __future__ import annotations

import json
import time

import sqlalchemy as sa

from fluxserve.store.base import WorkerRecord
from fluxserve.store.sqlbase import SqlStoreBase
from fluxserve.store.tables import workers


class SqlWorkerRegistry(SqlStoreBase):
    """Worker rows: registered, refreshed by heartbeats, purged when silent."""

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
