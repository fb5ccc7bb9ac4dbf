"""``fluxserve worker``: a GPU host's worker in cluster mode, with no HTTP server.

It connects to the shared PostgreSQL job store and the object storage, loads its models,
claims jobs (woken by LISTEN/NOTIFY), heartbeats, and on SIGTERM or Ctrl-C finishes the
job in hand within --shutdown-grace (else puts it back in the queue) and exits. It also
sweeps expired leases, as every cluster member does.
"""

from __future__ import annotations

import logging
import signal
import threading

from fluxserve.config import Settings
from fluxserve.errors import ConfigurationError
from fluxserve.logs import configure_logging

logger = logging.getLogger("fluxserve")


def worker(settings: Settings) -> int:
    from fluxserve.bootstrap import resolve_models
    from fluxserve.engine.pool import WorkerPool
    from fluxserve.jobs.service import JobService
    from fluxserve.safety.setup import resolve_safety
    from fluxserve.storage.opening import open_storage
    from fluxserve.store.opening import open_store

    configure_logging(settings.log_level, settings.log_format)
    if not settings.database:
        raise ConfigurationError(
            "fluxserve worker needs the shared job database: --database postgresql://...; "
            "with the embedded SQLite store, fluxserve serve runs its workers itself."
        )
    models = resolve_models(settings)  # downloads missing weights, with a progress bar
    safety = resolve_safety(settings, models.values())
    store = open_store(settings)  # migrates the schema if this is the first member up
    storage = open_storage(settings)
    jobs = JobService(store, storage, notify=lambda: None)
    retention = settings.job_retention
    pool = WorkerPool(
        settings,
        list(models.values()),
        store,
        housekeeping=lambda: jobs.purge_ended(retention),
        safety=safety,
    )
    stopping = threading.Event()

    def request_stop(signum: int, _frame: object) -> None:
        logger.info("%s: finishing the job in hand (at most %.0f s), then stopping",
                    signal.Signals(signum).name, settings.shutdown_grace)  # fmt: skip
        pool.begin_stop(settings.shutdown_grace)  # the grace counts from the signal
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    pool.start()
    logger.info("worker serving %s", ", ".join(models))
    try:
        stopping.wait()
    finally:
        pool.stop(settings.shutdown_grace)
        store.close()
    return 0
