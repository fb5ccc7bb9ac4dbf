"""Keeps the lease of the job a worker is running alive, from one background thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from fluxserve.domain import Job
from fluxserve.store.base import WorkQueue

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """Heartbeats the held job every third of the lease; ``lost`` turns true when the store
    refuses a heartbeat (the lease expired and the job was requeued or failed).

    One thread serves a worker's whole life, so holding a job costs no thread start. On the
    same beat, held job or not, it calls ``on_beat`` (the worker's row in the workers table).
    """

    def __init__(
        self,
        store: WorkQueue,
        lease_seconds: float,
        on_beat: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._lease_seconds = lease_seconds
        self._on_beat = on_beat
        self._jobs: list[Job] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.lost = False  # any held job's lease was lost
        self.lost_ids: set[str] = set()
        self._thread = threading.Thread(target=self._beat, name="lease-keeper", daemon=True)
        self._thread.start()

    def hold(self, *jobs: Job) -> None:
        """Keep the leases of ``jobs`` (one job, or a batch) alive until ``release``."""
        with self._lock:
            self._jobs, self.lost, self.lost_ids = list(jobs), False, set()

    def release(self) -> None:
        with self._lock:
            self._jobs = []

    def close(self) -> None:
        self._closed.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._closed.wait(self._lease_seconds / 3):
            with self._lock:
                held = list(self._jobs)
            for job in held:
                try:
                    alive = self._store.heartbeat(job.id, job.attempt, self._lease_seconds)
                except Exception:  # a transient store error must not end the heartbeats
                    logger.exception("heartbeat failed for job %s", job.id,
                                     extra={"job_id": job.id})  # fmt: skip
                    continue
                with self._lock:
                    if not alive and job in self._jobs:
                        logger.warning("lost the lease on job %s; its result will be dropped",
                                       job.id, extra={"job_id": job.id})  # fmt: skip
                        self.lost_ids.add(job.id)
                        self.lost = True
            if self._on_beat is not None:
                try:
                    self._on_beat()
                except Exception:  # presence is advisory: it must not end the heartbeats
                    logger.exception("worker heartbeat failed")
