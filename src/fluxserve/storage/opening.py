"""Open the blob storage a deployment names: local disk in the data dir (embedded), or
``--storage s3://bucket/prefix`` (cluster). No torch."""

from __future__ import annotations

from fluxserve.config import Settings
from fluxserve.storage.base import BlobStorage


def open_storage(settings: Settings) -> BlobStorage:
    if settings.storage:
        from fluxserve.storage.s3 import S3Storage

        return S3Storage(settings.storage, settings.s3_endpoint_url, settings.s3_region)
    from fluxserve.storage.local import LocalStorage

    return LocalStorage(settings.results_dir, settings.data_dir / "url-secret")
