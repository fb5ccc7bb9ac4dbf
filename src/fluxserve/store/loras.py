"""The LoRA registry in the job database, so every replica and worker sees the same names."""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from fluxserve.store.tables import loras


@dataclass(frozen=True)
class RegisteredLora:
    name: str
    source: str  # canonical (lora/sources.py)
    scale: float
    created_at: float


class LoraRegistry:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, name: str, source: str, scale: float) -> RegisteredLora:
        """Register (or replace) ``name``."""
        entry = RegisteredLora(name, source, scale, time.time())
        with self.engine.begin() as conn:
            conn.execute(loras.delete().where(loras.c.name == name))
            conn.execute(loras.insert().values(**entry.__dict__))
        return entry

    def get(self, name: str) -> RegisteredLora | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(loras).where(loras.c.name == name)).first()
        return RegisteredLora(**row._mapping) if row else None

    def all(self) -> list[RegisteredLora]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(loras).order_by(loras.c.name)).all()
        return [RegisteredLora(**row._mapping) for row in rows]

    def remove(self, name: str) -> bool:
        with self.engine.begin() as conn:
            return conn.execute(loras.delete().where(loras.c.name == name)).rowcount > 0
