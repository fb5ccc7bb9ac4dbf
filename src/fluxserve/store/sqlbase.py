"""What every SQL store role shares: the engine, and the few hooks the PostgreSQL store
overrides (its clock, NOTIFY, the lock of limited creates)."""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine


class SqlStoreBase:
    """A store role on any SQLAlchemy engine whose dialect supports UPDATE ... RETURNING."""

    # Whether workers of other processes and hosts share this store (PostgreSQL): then no
    # one may assume a running job's worker is gone just because it restarted.
    shared = False

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def ping(self) -> bool:
        """Whether the database answers (for readiness)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError:
            return False
        return True

    def _announce(self, conn: sa.Connection) -> None:
        """Tell idle workers elsewhere that jobs are queued (PostgreSQL: NOTIFY)."""

    def listen(self, on_wake: Callable[[], None], stop: Callable[[], bool]) -> None:
        """Call ``on_wake`` whenever another process queues jobs, until ``stop()``; returns
        at once where wake-ups are in-process only (SQLite)."""

    def create_schema(self) -> None:
        """Migrate the database to the current schema (store/migrations)."""
        from fluxserve.store.migrate import migrate

        migrate(self.engine)

    def lease_clock(self) -> float | sa.ColumnElement[float]:
        """The clock leases are written and judged by. One host owns a SQLite store, so its
        clock serves; PostgreSQL's store overrides this with the database's own clock, so
        hosts whose clocks disagree never expire each other's leases early."""
        return time.time()

    def _begin_write(self, conn: sa.Connection) -> None:
        """Start a write transaction that takes the database's write lock at once
        (SQLite: BEGIN IMMEDIATE), before any savepoint; PostgreSQL needs nothing."""

    def _serialise_limited_creates(self, conn: sa.Connection) -> None:
        """Make limited creates take turns. SQLite needs nothing: ``_begin_write`` takes the
        database's write lock before the counts run, so the next creator waits and then
        counts this job. PostgreSQL overrides this with a transaction-scoped lock."""

    def close(self) -> None:
        self.engine.dispose()
