"""Group commit: writes that arrive together share one transaction.

Under a burst, every submit's insert used to open a transaction of its own: up to 40
request threads queued for the pool's 15 connections, then for the database's write lock
(on SQLite through its busy handler, which sleeps between tries), and the thread holding
the lock waited for the GIL again at each statement. Sampled during bursts of 300, those
waits were the insert's time, not its work (issue 17; docs/benchmarks.md).

Here the first caller becomes the leader and writes what is pending, its own item and any
that arrived meanwhile (up to ``limit``), in one call of ``write``; the others wait on an
event, which the leader sets once their outcome is committed. Then the leader hands the
lead to the oldest item still pending, whose thread writes the next group. Alone, a caller
writes at once (a group of one); no thread of its own, nothing to start or stop.
"""

from __future__ import annotations

import copy
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

I = TypeVar("I")  # noqa: E741 (an item to write)
R = TypeVar("R")  # what writing it returned


class _Entry(Generic[I, R]):
    __slots__ = ("done", "error", "item", "leads", "result", "woken")

    def __init__(self, item: I) -> None:
        self.item = item
        self.woken = threading.Event()
        self.leads = False  # this entry's thread writes the next group
        self.done = False
        self.result: R | None = None
        self.error: BaseException | None = None


class GroupCommit(Generic[I, R]):
    """Write items in groups, one group at a time; ``run`` returns once its item is
    written (its outcome committed) and returns or raises that item's outcome."""

    def __init__(
        self, write: Callable[[Sequence[I]], Sequence[R | BaseException]], limit: int = 64
    ) -> None:
        """``write(items)`` writes a group in one transaction and returns one outcome per
        item: its result, or the exception that item's caller raises. An exception out of
        ``write`` is every caller's of that group."""
        self._write = write
        self._limit = limit
        self._mutex = threading.Lock()
        self._pending: deque[_Entry[I, R]] = deque()
        self._leading = False  # a thread is writing, or woken to write, a group

    def run(self, item: I) -> R:
        entry: _Entry[I, R] = _Entry(item)
        with self._mutex:
            self._pending.append(entry)
            if not self._leading:  # then nothing is pending before it
                self._leading = entry.leads = True
        if not entry.leads:
            entry.woken.wait()  # set when written, or when handed the lead
        if not entry.done:
            self._lead()
        if entry.error is not None:
            raise entry.error
        return entry.result  # type: ignore[return-value]

    @property
    def pending(self) -> int:
        """Items waiting for a group (not the one being written)."""
        with self._mutex:
            return len(self._pending)

    def _lead(self) -> None:
        """Write the oldest pending items (this thread's first among them), then hand over."""
        with self._mutex:
            group = [self._pending.popleft() for _ in range(min(self._limit, len(self._pending)))]
        try:
            outcomes: Sequence[R | BaseException] = self._write([e.item for e in group])
            if len(outcomes) != len(group):
                raise RuntimeError(f"{len(outcomes)} outcomes for a group of {len(group)}")
        except BaseException as exc:  # the whole group failed: each caller raises it
            outcomes = [exc] + [_copy(exc) for _ in group[1:]]
        finally:
            with self._mutex:
                successor = self._pending[0] if self._pending else None
                if successor is not None:
                    successor.leads = True  # the lead passes on; _leading stays True
                else:
                    self._leading = False
            if successor is not None:
                successor.woken.set()
        for entry, outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                entry.error = outcome
            else:
                entry.result = outcome
            entry.done = True
            entry.woken.set()


def _copy(exc: BaseException) -> BaseException:
    """A copy for another thread to raise (a traceback belongs to one raise)."""
    try:
        return copy.copy(exc)
    except Exception:
        return exc
