"""Durable job table, which is also the queue."""

from fluxserve.store.base import JobStore

__all__ = ["JobStore"]
