"""API keys and the limits on what a key may submit: who may call, and how much.

Keys are random 32-byte secrets shown once at creation; the database keeps only their
SHA-256 (a secret with 256 bits of entropy needs no slow password hash). The active-job
limit and the queue cap are read from the database, so they hold across API replicas; the
request-rate limit is counted in each API process.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
import time
from dataclasses import dataclass

from fluxserve.errors import TooManyRequests
from fluxserve.store.keys import ApiKey, KeyStore
from fluxserve.store.keys import owner_of as owner_of  # for the API: jobs/ is its seam
from fluxserve.store.tables import SubmitLimits, queue_full, too_many_active

SECRET_PREFIX = "fsk_"
DEFAULT_MAX_ACTIVE = 24  # BFL's limit of active tasks per key
# How long a looked-up key is trusted before the database is asked again: a revoked key
# stops working within this many seconds.
KEY_CACHE_SECONDS = 5.0


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyRing:
    """Creates, finds and revokes API keys."""

    def __init__(self, keys: KeyStore) -> None:
        self.keys = keys
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._lock = threading.Lock()

    def create(
        self, name: str, max_active: int = DEFAULT_MAX_ACTIVE, rate_per_minute: float | None = None,
        credits: float | None = None,
    ) -> tuple[ApiKey, str]:  # fmt: skip
        """A new key and its secret (the only time the secret exists outside the client)."""
        if not name.strip():
            raise ValueError("a key needs a name")
        if max_active < 1:
            raise ValueError("--max-active must be at least 1")
        if rate_per_minute is not None and rate_per_minute <= 0:
            raise ValueError("--rate must be a positive number of requests per minute")
        if credits is not None and not 0 <= credits < float("inf"):
            raise ValueError("--credits must be a number of credits, 0 or more")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id="key_" + secrets.token_hex(6),
            name=name.strip(),
            prefix=secret[:10],
            max_active=max_active,
            rate_per_minute=rate_per_minute,
            created_at=time.time(),
            credits=credits,
        )
        self.keys.add(key, digest(secret))
        return key, secret

    def find(self, secret: str) -> ApiKey | None:
        """The live key with this secret, or None."""
        hashed = digest(secret)
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(hashed)
        if cached is not None and now - cached[0] < KEY_CACHE_SECONDS:
            return cached[1]
        key = self.keys.by_digest(hashed)
        with self._lock:
            if len(self._cache) > 10_000:  # unknown secrets must not grow it without bound
                self._cache.clear()
            self._cache[hashed] = (now, key)
        return key

    def remaining_credits(self, key: ApiKey | None) -> float | None:
        """Credits the key has left, read fresh; None without a key or a budget."""
        if key is None:
            return None
        current = self.keys.by_id(key.id)
        return current.remaining if current is not None else None

    def revoke(self, id_or_name: str) -> list[ApiKey]:
        revoked = self.keys.revoke(id_or_name)
        with self._lock:
            self._cache.clear()
        return revoked

    def all(self) -> list[ApiKey]:
        return self.keys.all()


@dataclass
class _Bucket:
    tokens: float
    updated: float


class Admission:
    """Refuses a submit when the server's queue is full (503) or the key has too many
    active jobs or too many recent submits (429); each with a Retry-After.

    ``check`` runs before a submit's images are fetched and decoded, so a refused client
    costs two counts; ``limits`` go with the insert, which enforces them atomically.
    """

    def __init__(self, keys: KeyStore, max_queue: int) -> None:
        self.keys = keys
        self.max_queue = max_queue
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def limits(self, key: ApiKey | None, cost: float = 0.0) -> SubmitLimits:
        return SubmitLimits(key.max_active if key is not None else None, self.max_queue, cost)

    def check(self, key: ApiKey | None) -> None:
        if self.keys.queued_jobs() >= self.max_queue:
            raise queue_full(self.max_queue)
        if key is None:
            return
        if self.keys.active_jobs(key.id) >= key.max_active:
            raise too_many_active(key.max_active)
        if key.rate_per_minute is not None:
            self._take_token(key)

    def _take_token(self, key: ApiKey) -> None:
        """A token bucket per key: ``rate_per_minute`` submits a minute, in bursts of up to
        that many."""
        rate = key.rate_per_minute / 60.0  # tokens per second
        capacity = max(1.0, key.rate_per_minute)
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.setdefault(key.id, _Bucket(capacity, now))
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return
            wait = math.ceil((1 - bucket.tokens) / rate)
        raise TooManyRequests(
            f"This API key may submit {key.rate_per_minute:g} requests a minute; retry in "
            f"{wait} s.",
            wait,
        )
