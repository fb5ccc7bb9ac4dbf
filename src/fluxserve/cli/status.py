"""``fluxserve status``: the queue, the running jobs and the workers, read from the job store.

Reads only: it works beside a running server (SQLite in WAL mode lets a reader in at any
time) and against a cluster's PostgreSQL database. It never creates or migrates a database.
"""

from __future__ import annotations

import json
import time
from typing import Any, Protocol

import sqlalchemy as sa

from fluxserve.config import Settings
from fluxserve.errors import ConfigurationError
from fluxserve.store.base import STALE_AFTER_LEASES, JobStats, WorkerRegistry
from fluxserve.store.sql import SqlJobStore

RUNNING_SHOWN = 100  # running jobs listed at most


class StatusSource(JobStats, WorkerRegistry, Protocol):
    """What ``fluxserve status`` reads: the job counts and pages, and the workers table."""


def open_existing_store(settings: Settings) -> SqlJobStore:
    """The deployment's job store as it is: no schema created, no migration."""
    if settings.database:
        from fluxserve.store.postgres import PostgresJobStore

        return PostgresJobStore(settings.database, migrate=False)
    from fluxserve.store.sqlite import SqliteJobStore

    path = settings.database_path
    if not path.is_file():
        raise ConfigurationError(
            f"There is no job database at {path}: pass the server's --data-dir (or "
            "--database postgresql://... for a cluster)."
        )
    return SqliteJobStore(path, migrate=False)


def snapshot(store: StatusSource, lease_seconds: float, now: float | None = None) -> dict:
    """What ``fluxserve status`` shows, as plain data (the --json output)."""
    now = time.time() if now is None else now
    running = store.running_jobs(RUNNING_SHOWN)
    workers = store.list_workers()
    return {
        "time": now,
        "queue": dict(sorted(store.active_counts().items())),
        "running": [
            {
                "id": job.id,
                "model": job.model,
                "worker": job.worker_id,
                "started_at": job.started_at,
                "progress": job.progress,
                "attempt": job.attempt,
                "batch_size": job.batch_size,
            }
            for job in running
        ],
        "workers": [
            {
                "id": w.id,
                "host": w.host,
                "models": w.models,
                "device": w.device,
                "started_at": w.started_at,
                "last_seen": w.last_seen,
                "stale": w.is_stale(lease_seconds, now),
                "current_job": w.current_job,
                "gpu_memory_bytes": w.gpu_memory_bytes,
                "gpu_memory_peak_bytes": w.gpu_memory_peak_bytes,
            }
            for w in workers
        ],
    }


def status(settings: Settings, as_json: bool = False) -> int:
    store = open_existing_store(settings)
    try:
        data = snapshot(store, settings.lease_seconds)
    except sa.exc.SQLAlchemyError as exc:
        where = "the --database" if settings.database else str(settings.database_path)
        raise ConfigurationError(
            f"Could not read the job database at {where} ({type(exc).__name__}); is it a "
            "fluxserve database that a current server has opened (and migrated)?"
        ) from None
    finally:
        store.close()
    print(json.dumps(data, indent=2) if as_json else render(data, settings.lease_seconds))
    return 0


def render(data: dict, lease_seconds: float) -> str:
    now = data["time"]
    lines = ["Queue"]
    if data["queue"]:
        rows = [[m, str(c["queued"]), str(c["running"])] for m, c in data["queue"].items()]
        lines += _table(["MODEL", "QUEUED", "RUNNING"], rows)
    else:
        lines.append("  empty: no queued or running jobs")
    lines += ["", f"Running jobs ({len(data['running'])})"]
    if data["running"]:
        rows = [
            [
                job["id"],
                job["model"],
                job["worker"] or "-",
                f"{job['progress'] * 100:.0f}%",
                _ago(now, job["started_at"]),
                str(job["batch_size"] or 1),
            ]
            for job in data["running"]
        ]
        lines += _table(["JOB", "MODEL", "WORKER", "PROGRESS", "STARTED", "BATCH"], rows)
    stale = sum(worker["stale"] for worker in data["workers"])
    title = f"Workers ({len(data['workers']) - stale} up"
    title += f", {stale} stale: silent for over {STALE_AFTER_LEASES} leases)" if stale else ")"
    lines += ["", title]
    if data["workers"]:
        rows = [
            [
                worker["id"] + (" (stale)" if worker["stale"] else ""),
                worker["host"],
                ",".join(worker["models"]),
                worker["device"],
                worker["current_job"] or "-",
                _ago(now, worker["last_seen"]),
                _memory(worker["gpu_memory_bytes"], worker["gpu_memory_peak_bytes"]),
            ]
            for worker in data["workers"]
        ]
        header = ["WORKER", "HOST", "MODELS", "DEVICE", "CURRENT JOB", "LAST SEEN", "GPU MEMORY"]
        lines += _table(header, rows)
    else:
        lines.append("  none registered")
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]]  # fmt: skip


def _ago(now: float, then: Any) -> str:
    if then is None:
        return "-"
    seconds = max(0.0, now - then)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _memory(allocated: int | None, peak: int | None) -> str:
    if allocated is None:
        return "-"
    text = f"{allocated / 2**30:.1f} GiB"
    return text + (f" (peak {peak / 2**30:.1f} GiB)" if peak is not None else "")
