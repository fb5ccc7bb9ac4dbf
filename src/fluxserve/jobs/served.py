"""What the cluster's live workers serve, for an API replica started without --model.

Each worker writes the names of its models into the workers table and refreshes its row
every third of a lease; a replica reads the table (at most every ``REFRESH`` seconds, so
a burst of submits costs one read) and routes to the models of the workers that are not
stale. A name is turned into its spec the way ``--model`` would be, without weights.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from fluxserve.specs import ModelSpec
from fluxserve.store.base import WorkerRegistry

logger = logging.getLogger(__name__)

REFRESH = 2.0  # seconds a read of the workers table is reused


class ServedModels:
    def __init__(
        self,
        workers: WorkerRegistry,
        spec_of: Callable[[str], ModelSpec],
        lease_seconds: float,
    ) -> None:
        self.workers = workers
        self.spec_of = spec_of  # a model name -> its spec; raises for a name it cannot place
        self.lease_seconds = lease_seconds
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._models: dict[str, ModelSpec] = {}
        self._unplaceable: set[str] = set()

    def __call__(self) -> dict[str, ModelSpec]:
        with self._lock:
            if time.monotonic() - self._read_at >= REFRESH:
                self._models = self._read()
                self._read_at = time.monotonic()
            return self._models

    def _read(self) -> dict[str, ModelSpec]:
        now = time.time()
        names: list[str] = []
        for worker in self.workers.list_workers():
            if not worker.is_stale(self.lease_seconds, now):
                names += [name for name in worker.models if name not in names]
        models = {}
        for name in names:
            try:
                models[name] = self.spec_of(name)
            except Exception as exc:  # a local directory on the worker's host only
                if name not in self._unplaceable:
                    self._unplaceable.add(name)
                    logger.warning(
                        "a worker serves %s, which this replica cannot place (%s); give the "
                        "replica --model for it", name, exc,
                    )  # fmt: skip
        return models
