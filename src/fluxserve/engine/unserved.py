"""Queued jobs for a model that no live worker serves end Error, not Pending for ever.

A job can wait for a model nobody serves: the server restarted with other --model flags,
the cluster's only worker of that model was scaled away, or an API replica was told of a
model no worker loads. Every sweeping process (each server and ``fluxserve worker``) looks
at the workers table: a model that no live worker has served for ``timeout`` seconds, in
this process's view, has its jobs queued longer than ``timeout`` ended ``model_unavailable``.
Counting from this process's first look gives workers that are still starting (loading
their weights) the whole timeout after a restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fluxserve.domain import Job
from fluxserve.store.base import WorkerStore

logger = logging.getLogger(__name__)

CHECK_INTERVAL = 5.0  # seconds between looks at the queue and the workers table


class UnservedJobs:
    def __init__(
        self,
        store: WorkerStore,
        timeout: float,
        lease_seconds: float,
        local_models: Callable[[], set[str]] = set,
    ) -> None:
        self.store = store
        self.timeout = timeout
        self.lease_seconds = lease_seconds
        # Models of this process's own workers that are alive but maybe still loading
        # (a worker registers in the table once it is ready).
        self.local_models = local_models
        self._unserved_since: dict[str, float] = {}

    def served_models(self, now: float) -> set[str]:
        live = (w for w in self.store.list_workers() if not w.is_stale(self.lease_seconds, now))
        return {model for worker in live for model in worker.models} | self.local_models()

    def sweep(self, now: float | None = None) -> list[Job]:
        """End the jobs that waited too long for an unserved model; the jobs ended."""
        now = time.time() if now is None else now
        queued = self.store.queued_counts()
        if not queued:
            self._unserved_since.clear()
            return []
        served = self.served_models(now)
        ended: list[Job] = []
        for model in list(self._unserved_since):
            if model not in queued or model in served:
                del self._unserved_since[model]
        for model in queued:
            if model in served:
                continue
            since = self._unserved_since.setdefault(model, now)
            if now - since < self.timeout:
                continue
            message = (
                f"No worker serves model {model}: this job waited {self.timeout:.0f} s "
                "(--unserved-timeout) for one. Start a worker with --model "
                f"{model}, or submit to a model the server lists."
            )
            for job in self.store.fail_queued(model, now - self.timeout, "model_unavailable",
                                              message):  # fmt: skip
                logger.warning("job %s: no worker serves %s -> Error", job.id, model,
                               extra={"job_id": job.id})  # fmt: skip
                ended.append(job)
        return ended
