"""Lock files that tell a starting server whether a worker of its predecessor still runs.

Each worker process of an embedded (SQLite) server holds an exclusive ``flock`` on
``<data dir>/workers/<pid>.lock`` for its whole life. The kernel drops the lock when the
process ends, however it ends, so the lock cannot go stale the way a pid file does. A
worker dies with its server (engine/child.py watches the parent), but a server that starts
on the data dir does not trust that: a lock still held means a worker of an earlier server
is alive and may be running a job on the GPU, so it is killed, and its job is requeued only
once its lock is free.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import time
from pathlib import Path
from typing import IO

from fluxserve.errors import ConfigurationError

logger = logging.getLogger(__name__)

STALE_WORKER_WAIT = 10.0  # seconds a killed worker may take to be gone


def workers_dir(data_dir: Path) -> Path:
    return data_dir / "workers"


def hold_worker_lock(data_dir: Path) -> IO[str]:
    """This worker process's lock; keep the handle open for the process's life."""
    directory = workers_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / f"{os.getpid()}.lock", "w")  # noqa: SIM115 (held for life)
    fcntl.flock(handle, fcntl.LOCK_EX)  # a new file of our own pid: never contended
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _try_lock(path: Path) -> bool:
    """Whether ``path``'s lock is free (taken and dropped at once)."""
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


def stop_stale_workers(data_dir: Path, timeout: float = STALE_WORKER_WAIT) -> list[int]:
    """Kill the workers of an earlier server on this data dir that still run, wait until
    they are gone, and remove the lock files of dead ones; the pids that were killed.
    Call it holding the data dir's server lock, before requeueing the jobs left running."""
    directory = workers_dir(data_dir)
    if not directory.is_dir():
        return []
    killed = []
    for path in sorted(directory.glob("*.lock")):
        if _try_lock(path):
            path.unlink(missing_ok=True)
            continue
        # The holder is the process that wrote its pid there (the lock is never passed on).
        pid = int(path.read_text().strip() or 0)
        if pid <= 0 or pid == os.getpid():
            continue
        logger.warning("worker process %d of an earlier server still runs; stopping it", pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        deadline = time.monotonic() + timeout
        while not _try_lock(path):
            if time.monotonic() > deadline:
                raise ConfigurationError(
                    f"worker process {pid} of an earlier server did not exit after SIGKILL "
                    f"within {timeout:.0f} s; its job is not requeued while it may still run"
                )
            time.sleep(0.05)
        path.unlink(missing_ok=True)
    return killed
