"""The cluster job store: PostgreSQL, shared by every API replica and worker.

Claims take the oldest free job with ``FOR UPDATE SKIP LOCKED``; leases, fencing and the
sweep are the SQL shared with SQLite. Queueing a job sends a payload-free ``NOTIFY`` on
commit, so idle workers on any host wake at once instead of polling.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from fluxserve.store.sql import SqlJobStore

logger = logging.getLogger(__name__)

CHANNEL = "fluxserve_jobs"
LISTEN_POLL = 1.0  # seconds between checks of ``stop`` while listening
RECONNECT_DELAY = 2.0  # seconds before listening again after the connection dropped
LIMITS_LOCK = 0x666C7578  # advisory lock key of limited job creates ("flux")


def engine_url(url: str) -> sa.URL:
    """``postgresql://...`` with the psycopg (v3) driver, whatever driver was named."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+psycopg")


class PostgresJobStore(SqlJobStore):
    shared = True

    def __init__(self, url: str, migrate: bool = True) -> None:
        self.url = engine_url(url)
        engine = sa.create_engine(
            self.url,
            pool_pre_ping=True,  # a connection the server dropped is replaced, not used
            pool_recycle=300,
            # A silent network (no reset) must not hang a request: TCP keepalives notice a
            # dead peer, and no statement runs longer than a minute.
            connect_args={
                "connect_timeout": 5,
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 5,
                "keepalives_count": 3,
                "options": "-c statement_timeout=60000",
            },
        )
        super().__init__(engine)
        if migrate:
            self.create_schema()

    def lease_clock(self) -> sa.ColumnElement[float]:
        # The database's clock, read in the statement: one clock for every host.
        return sa.cast(sa.extract("epoch", sa.func.clock_timestamp()), sa.Float)

    def _serialise_limited_creates(self, conn: sa.Connection) -> None:
        # Concurrent transactions cannot see each other's uncommitted inserts, so limited
        # creates take one lock in turn (held to commit): each counts every job before it.
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": LIMITS_LOCK})

    def _announce(self, conn: sa.Connection) -> None:
        conn.execute(sa.text(f"NOTIFY {CHANNEL}"))  # delivered when the transaction commits

    def listen(self, on_wake: Callable[[], None], stop: Callable[[], bool]) -> None:
        """Wake ``on_wake`` on every NOTIFY until ``stop()``; reconnects after an outage."""
        import psycopg

        dsn = self.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not stop():
            try:
                with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    on_wake()  # jobs queued while no one listened are not missed
                    while not stop():
                        for _ in conn.notifies(timeout=LISTEN_POLL, stop_after=1):
                            on_wake()
            except psycopg.Error as exc:
                logger.warning("listening for new jobs failed (%s); retrying", exc)
                time.sleep(RECONNECT_DELAY)
