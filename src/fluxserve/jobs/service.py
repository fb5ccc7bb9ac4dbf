"""JobService: submit, look up and link jobs."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from fluxserve.domain import GenerationRequest, Job
from fluxserve.storage.base import BlobStorage
from fluxserve.store.base import JobStore


class JobService:
    def __init__(
        self,
        store: JobStore,
        storage: BlobStorage,
        notify: Callable[[], None],
        url_ttl: int = 600,
    ) -> None:
        self.store = store
        self.storage = storage
        self._notify = notify
        self.url_ttl = url_ttl

    def submit(self, request: GenerationRequest) -> Job:
        """Queue a job and wake the workers; returns the stored job."""
        job = Job(id=str(uuid.uuid4()), request=request, created_at=time.time())
        self.store.create(job)
        self._notify()
        return job

    def get(self, job_id: str) -> Job | None:
        return self.store.get(job_id)

    def queue_position(self, job_id: str) -> int | None:
        return self.store.queue_position(job_id)

    def result_urls(self, job: Job, base_url: str) -> list[str]:
        """Fresh signed URLs for the job's images, valid for ``url_ttl`` seconds."""
        return [self.storage.url(key, base_url, self.url_ttl) for key in job.result_keys]
