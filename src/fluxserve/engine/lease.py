"""Keeps a claimed job's lease alive from a background thread while the model runs."""

from __future__ import annotations

import logging
import threading

from fluxserve.domain import Job
from fluxserve.store.base import JobStore

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """Heartbeats every third of the lease; ``lost`` turns true if the store refuses one."""

    def __init__(self, store: JobStore, job: Job, lease_seconds: float) -> None:
        self._store = store
        self._job = job
        self._lease_seconds = lease_seconds
        self._done = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._beat, name=f"lease-{job.id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._done.wait(self._lease_seconds / 3):
            try:
                alive = self._store.heartbeat(self._job.id, self._job.attempt, self._lease_seconds)
            except Exception:  # a transient store error must not kill the job
                logger.exception("heartbeat failed for job %s", self._job.id)
                continue
            if not alive:
                logger.warning("lost the lease on job %s; its result will be dropped", self._job.id)
                self.lost = True
                return
