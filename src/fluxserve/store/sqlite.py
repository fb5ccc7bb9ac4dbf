"""The embedded job store: one SQLite file in WAL mode inside the data dir."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from fluxserve.store.sql import SqlJobStore


def _set_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the API read while a worker process writes; busy_timeout makes concurrent
    # writers wait for the lock instead of failing with "database is locked".
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class SqliteJobStore(SqlJobStore):
    def __init__(self, path: Path, migrate: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(f"sqlite:///{path}")
        sa.event.listen(engine, "connect", _set_pragmas)
        super().__init__(engine)
        if migrate:  # off for a reader of a server's database (fluxserve status)
            self.create_schema()

    def _begin_write(self, conn: sa.Connection) -> None:
        # pysqlite would BEGIN (deferred) only at the first INSERT: a savepoint before it
        # would be the transaction, and its release a commit. IMMEDIATE also takes the
        # write lock now (waiting busy_timeout for a worker's write), not halfway through.
        conn.exec_driver_sql("BEGIN IMMEDIATE")
