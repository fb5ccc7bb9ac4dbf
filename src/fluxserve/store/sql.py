"""The whole job store over SQLAlchemy Core: every role's SQL, shared by the SQLite and
PostgreSQL stores. Each role lives in its own module, over the same tables and engine:

- ``job_table.SqlJobTable``: create (with limits), read, cancel, clean up;
- ``work_queue.SqlWorkQueue``: claims, leases, ends, the sweep;
- ``outbox.SqlWebhookOutbox``: webhook deliveries;
- ``workers.SqlWorkerRegistry``: the workers table;
- ``stats.SqlJobStats``: counts and pages for /metrics and ``fluxserve status``.

The tables themselves are in ``tables``; what the roles share (the engine, the hooks the
PostgreSQL store overrides) in ``sqlbase.SqlStoreBase``.
"""

from __future__ import annotations

from fluxserve.store.job_table import SqlJobTable
from fluxserve.store.outbox import SqlWebhookOutbox
from fluxserve.store.stats import SqlJobStats
from fluxserve.store.work_queue import SqlWorkQueue
from fluxserve.store.workers import SqlWorkerRegistry


class SqlJobStore(SqlJobTable, SqlWorkQueue, SqlWebhookOutbox, SqlWorkerRegistry, SqlJobStats):
    """JobStore on any SQLAlchemy engine whose dialect supports UPDATE ... RETURNING: every
    role at once, for the composition root and the stores of each database."""
