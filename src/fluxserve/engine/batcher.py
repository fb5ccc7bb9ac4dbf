"""When to run a batch: a pure function of sizes and times, so it is tested without sleeps.

The worker claims the oldest queued job and the queued jobs that share its batch key
(``JobStore.claim_batch``). If the batch is not full it may wait a little for more to
arrive, but never past ``max_wait`` after the oldest job was queued: the first request of
a quiet server must not pay for a batch that never fills.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPolicy:
    max_size: int = 1  # 1: no batching
    max_wait: float = 0.0  # seconds a claimed job may wait for companions

    def __post_init__(self) -> None:
        if self.max_size < 1 or self.max_wait < 0:
            raise ValueError("max_size must be at least 1 and max_wait not negative")


def wait_for_more(policy: BatchPolicy, size: int, oldest_queued_at: float, now: float) -> float:
    """Seconds to wait for more jobs before running a batch of ``size`` (0: run now).

    Run now when the batch is full, when waiting is off, or when the oldest job has
    already waited ``max_wait`` since it was queued; otherwise wait out the rest of it.
    """
    if size >= policy.max_size or policy.max_wait <= 0:
        return 0.0
    remaining = oldest_queued_at + policy.max_wait - now
    return max(0.0, remaining)


def batchable(num_images: int, task: str) -> bool:
    """Jobs that can share a batch: one image each, text-to-image (input images differ in
    size and go one job at a time)."""
    return num_images == 1 and task == "text-to-image"
