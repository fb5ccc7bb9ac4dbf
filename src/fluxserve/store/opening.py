"""Open the job store a deployment names: SQLite in the data dir (embedded), or
``--database postgresql://...`` (cluster). No torch."""

from __future__ import annotations

from fluxserve.config import Settings
from fluxserve.store.sql import SqlJobStore


def open_store(settings: Settings, migrate: bool = True) -> SqlJobStore:
    if settings.database:
        from fluxserve.store.postgres import PostgresJobStore

        return PostgresJobStore(settings.database, migrate=migrate)
    from fluxserve.store.sqlite import SqliteJobStore

    return SqliteJobStore(settings.database_path)
