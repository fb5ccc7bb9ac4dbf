"""Open the job store and blob storage a deployment names: embedded or cluster. No torch.

Embedded: SQLite in the data dir and blobs on local disk. Cluster: ``--database
postgresql://...`` and ``--storage s3://bucket/prefix``. Each may be chosen on its own.
"""

from __future__ import annotations

from fluxserve.config import Settings
from fluxserve.storage.base import BlobStorage
from fluxserve.store.sql import SqlJobStore


def open_store(settings: Settings, migrate: bool = True) -> SqlJobStore:
    if settings.database:
        from fluxserve.store.postgres import PostgresJobStore

        return PostgresJobStore(settings.database, migrate=migrate)
    from fluxserve.store.sqlite import SqliteJobStore

    return SqliteJobStore(settings.database_path)


def open_storage(settings: Settings) -> BlobStorage:
    if settings.storage:
        from fluxserve.storage.s3 import S3Storage

        return S3Storage(settings.storage, settings.s3_endpoint_url, settings.s3_region)
    from fluxserve.storage.local import LocalStorage

    return LocalStorage(settings.results_dir, settings.data_dir / "url-secret")
