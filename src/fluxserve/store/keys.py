"""API keys in the job database: only a digest of each secret is stored."""

from __future__ import annotations

import time
from dataclasses import dataclass, fields

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from fluxserve.store.tables import COUNT_ACTIVE, COUNT_QUEUED, api_keys


@dataclass(frozen=True)
class ApiKey:
    id: str  # public: names the key in logs, the CLI and job ownership
    name: str
    prefix: str  # the secret's first characters, to recognise it
    max_active: int  # queued + running jobs at once
    rate_per_minute: float | None  # submits per minute; None: unlimited
    created_at: float
    revoked_at: float | None = None
    credits: float | None = None  # a budget in credits; None: unlimited
    spent: float = 0.0  # what the key's jobs have cost so far

    @property
    def remaining(self) -> float | None:
        """Credits left; None without a budget."""
        return None if self.credits is None else round(self.credits - self.spent, 6)


def _row_to_key(row: sa.Row) -> ApiKey:
    return ApiKey(**{f.name: row._mapping[f.name] for f in fields(ApiKey)})


def owner_of(key: ApiKey | None) -> str:
    """The owner a key's jobs carry: its id, or "" with keys off."""
    return key.id if key is not None else ""


class KeyStore:
    """The api_keys table, and the job counts the limits need."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, key: ApiKey, digest: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(api_keys.insert().values(digest=digest, **key.__dict__))

    def by_digest(self, digest: str) -> ApiKey | None:
        """The live (not revoked) key whose secret has this digest."""
        stmt = sa.select(api_keys).where(
            api_keys.c.digest == digest, api_keys.c.revoked_at.is_(None)
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        return _row_to_key(row) if row else None

    def all(self) -> list[ApiKey]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(api_keys).order_by(api_keys.c.created_at)).all()
        return [_row_to_key(row) for row in rows]

    def revoke(self, id_or_name: str) -> list[ApiKey]:
        """Revoke the live key with this id, or every live key with this name."""
        match = sa.or_(api_keys.c.id == id_or_name, api_keys.c.name == id_or_name)
        stmt = (
            api_keys.update()
            .where(match, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=time.time())
            .returning(*api_keys.c)
        )
        with self.engine.begin() as conn:
            return [_row_to_key(row) for row in conn.execute(stmt).all()]

    def by_id(self, key_id: str) -> ApiKey | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
        return _row_to_key(row) if row else None

    def has_live_keys(self) -> bool:
        stmt = sa.select(api_keys.c.id).where(api_keys.c.revoked_at.is_(None)).limit(1)
        with self.engine.connect() as conn:
            return conn.execute(stmt).first() is not None

    def active_jobs(self, owner: str) -> int:
        """Queued and running jobs of one key."""
        with self.engine.connect() as conn:
            return int(conn.execute(COUNT_ACTIVE, {"owner": owner}).scalar_one())

    def queued_jobs(self) -> int:
        """Queued jobs of every key and model."""
        with self.engine.connect() as conn:
            return int(conn.execute(COUNT_QUEUED).scalar_one())
