"""Flags and wake-ups shared between the server and its workers, safe when a worker dies.

``multiprocessing.Event`` is built on a lock: a worker killed while waiting on one leaves
it so that every later ``set()`` blocks for ever, which wedged the server after a worker was
SIGKILLed. These primitives take no lock: a flag is a shared byte, and a wake-up is a
semaphore whose ``set()`` is a single ``sem_post``.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any


class Flag:
    """A boolean that one side sets and the other reads; never blocks."""

    def __init__(self, ctx: Any = None) -> None:
        self._value = ctx.RawValue(ctypes.c_bool, False) if ctx is not None else None
        self._local = False

    def set(self) -> None:
        if self._value is None:
            self._local = True
        else:
            self._value.value = True

    def clear(self) -> None:
        if self._value is None:
            self._local = False
        else:
            self._value.value = False

    def is_set(self) -> bool:
        return self._local if self._value is None else bool(self._value.value)


class Wakeup:
    """``set()`` never blocks; ``wait()`` returns at once if set since the last wait."""

    def __init__(self, ctx: Any = None) -> None:
        self._semaphore = ctx.Semaphore(0) if ctx is not None else threading.Semaphore(0)

    def set(self) -> None:
        self._semaphore.release()

    def wait(self, timeout: float | None = None) -> bool:
        woken = self._semaphore.acquire(timeout=timeout)
        while self._semaphore.acquire(False):  # many sets since the last wait count once
            pass
        return woken
