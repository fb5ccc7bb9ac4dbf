"""What /metrics reads of the job store, so the API reaches the store only through jobs/:
the ``JobStats`` role (counts, pages of ended jobs) and the workers table's rows."""

from __future__ import annotations

from typing import Protocol

from fluxserve.store.base import EndedJob, JobStats, WorkerRecord

__all__ = ["EndedJob", "JobStats", "MetricsSource", "WorkerRecord"]


class MetricsSource(JobStats, Protocol):
    """The job stats, and the workers table read-only (the worker gauges)."""

    def list_workers(self) -> list[WorkerRecord]: ...
