"""The job database's tables (SQLAlchemy Core), shared by every SQL store role,
and the helpers over them: a row as a Job, the limit counts, the submit limits."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from fluxserve.domain import GenerationRequest, Job, JobReport, JobStatus, Webhook
from fluxserve.errors import PaymentRequired, ServerBusy, TooManyRequests

metadata = sa.MetaData()

jobs = sa.Table(
    "jobs",
    metadata,
    # seq orders the queue: submission order, assigned by the database.
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("request", sa.Text, nullable=False),
    sa.Column("progress", sa.Float, nullable=False, default=0.0),
    sa.Column("attempt", sa.Integer, nullable=False, default=0),
    sa.Column("worker_id", sa.String(200)),
    sa.Column("lease_expires_at", sa.Float),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("result_keys", sa.Text),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text),
    # Set by a cancel of a running job; the worker polls it between steps.
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    # JSON: safety verdicts, the rewritten prompt, notes (domain.JobReport).
    sa.Column("report", sa.Text),
    # GenerationRequest.batch_key: queued jobs that can share a batch (claim_batch).
    sa.Column("batch_key", sa.String(400)),
    # The API key that made the job ("" with --auth off); only it may read the job.
    sa.Column("owner", sa.String(32), nullable=False, default=""),
    # A client's Idempotency-Key: a retried submit with the same key gets the same job.
    sa.Column("idempotency_key", sa.String(200)),
    sa.Column("batch_size", sa.Integer),  # how many jobs ran in its batch
    # Webhook delivery: JSON {"url", "secret", "dialect"}; state pending/delivered/failed.
    sa.Column("webhook", sa.Text),
    sa.Column("webhook_state", sa.String(16)),
    sa.Column("webhook_attempts", sa.Integer, nullable=False, default=0),
    sa.Column("webhook_next_at", sa.Float),
    sa.Column("webhook_error", sa.Text),
    # JSON {"image": data: URI, "step", "steps"}: the running job's latest preview, when
    # its request asked for them (migration 0007); cleared when the job stops running.
    sa.Column("preview", sa.Text),
    sa.Index("ix_jobs_claim", "status", "model", "seq"),
    sa.Index("ix_jobs_batch", "status", "batch_key", "seq"),
    sa.Index("ix_jobs_owner", "owner", "status"),
    sa.Index("ux_jobs_idempotency", "owner", "idempotency_key", unique=True),
    sa.Index("ix_jobs_webhook", "webhook_state", "webhook_next_at"),
    # /metrics reads the jobs that ended since its last scrape (migration 0004).
    sa.Index("ix_jobs_finished", "finished_at", "seq"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),  # public: named in logs and the CLI
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False, unique=True),  # sha256 of the secret
    sa.Column("prefix", sa.String(16), nullable=False),  # the secret's first characters
    sa.Column("max_active", sa.Integer, nullable=False),
    sa.Column("rate_per_minute", sa.Float),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
    # A budget in credits (None: unlimited) and what its jobs have cost so far.
    sa.Column("credits", sa.Float),
    sa.Column("spent", sa.Float, nullable=False, server_default="0"),
)

# The operator's LoRA registry (``fluxserve loras``; BFL's finetunes): a name for a source.
loras = sa.Table(
    "loras",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("source", sa.String(2100), nullable=False),
    sa.Column("scale", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("models", sa.Text, nullable=False),  # JSON list
    sa.Column("device", sa.String(64), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
    sa.Column("current_job", sa.String(64)),
    sa.Column("gpu_memory_bytes", sa.BigInteger),
    sa.Column("gpu_memory_peak_bytes", sa.BigInteger),
)

_RUNNING = JobStatus.RUNNING.value
ACTIVE_RETRY_AFTER = 5  # seconds: a job of the key has likely finished by then
BUSY_RETRY_AFTER = 10


# The limits' counts, built once: every submit runs them, and building a statement cost
# more than running it on SQLite.
# Queued jobs of every key and model.
COUNT_QUEUED = (
    sa.select(sa.func.count()).select_from(jobs).where(jobs.c.status == JobStatus.QUEUED.value)
)
# Queued and running jobs of one key: execute with {"owner": key id}.
COUNT_ACTIVE = (
    sa.select(sa.func.count())
    .select_from(jobs)
    .where(
        jobs.c.owner == sa.bindparam("owner"),
        jobs.c.status.in_([JobStatus.QUEUED.value, _RUNNING]),
    )
)


def queue_full(max_queue: int) -> ServerBusy:
    return ServerBusy(f"The server's queue is full ({max_queue} jobs); retry later.",
                      BUSY_RETRY_AFTER)  # fmt: skip


def too_many_active(max_active: int) -> TooManyRequests:
    return TooManyRequests(
        f"This API key has {max_active} active tasks, its limit; wait until one finishes.",
        ACTIVE_RETRY_AFTER,
    )


def charge(conn: sa.Connection, owner: str, cost: float) -> None:
    """Take ``cost`` credits from ``owner``'s budget in the inserting transaction: a key
    without a budget is not charged; one whose credits would go below zero raises."""
    within = sa.or_(api_keys.c.credits.is_(None), api_keys.c.spent + cost <= api_keys.c.credits)
    taken = conn.execute(
        api_keys.update()
        .where(api_keys.c.id == owner, within)
        .values(spent=api_keys.c.spent + cost)
    )
    if taken.rowcount == 0:
        left = conn.execute(
            sa.select(api_keys.c.credits - api_keys.c.spent).where(api_keys.c.id == owner)
        ).scalar()
        if left is not None:  # a key with a budget it cannot cover
            raise PaymentRequired(
                f"This task costs {cost:g} credits and this API key has {max(left, 0):g} left."
            )


@dataclass(frozen=True)
class SubmitLimits:
    """What a new queued job may not exceed: its key's active jobs, the server's queue."""

    max_active: int | None = None
    max_queue: int | None = None
    cost: float = 0.0  # credits the job takes from its key's budget, if it has one


def row_to_job(row: Any) -> Job:
    m = row._mapping
    return Job(
        id=m["id"],
        seq=m["seq"],
        request=GenerationRequest.from_dict(json.loads(m["request"])),
        status=JobStatus(m["status"]),
        progress=m["progress"],
        attempt=m["attempt"],
        worker_id=m["worker_id"],
        lease_expires_at=m["lease_expires_at"],
        created_at=m["created_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
        result_keys=json.loads(m["result_keys"]) if m["result_keys"] else [],
        error_code=m["error_code"],
        error_message=m["error_message"],
        cancel_requested=bool(m["cancel_requested"]),
        report=JobReport.from_dict(json.loads(m["report"]) if m["report"] else None),
        owner=m["owner"],
        idempotency_key=m["idempotency_key"],
        batch_size=m["batch_size"],
        webhook=Webhook.from_dict(json.loads(m["webhook"]) if m["webhook"] else None),
        webhook_state=m["webhook_state"],
        webhook_attempts=m["webhook_attempts"],
        webhook_error=m["webhook_error"],
        preview=json.loads(m["preview"]) if m["preview"] else None,
    )


def ended(status: JobStatus, code: str, message: str, now: float | None = None) -> dict[str, Any]:
    """The values that end a job: its final status, error code and message, and when (no
    lease and no preview any more)."""
    return {
        "status": status.value,
        "error_code": code,
        "error_message": message,
        "finished_at": time.time() if now is None else now,
        "lease_expires_at": None,
        "preview": None,
    }


def cancelled(now: float | None = None) -> dict[str, Any]:
    """The values that end a job cancelled."""
    return ended(JobStatus.CANCELLED, "cancelled", "The request was cancelled.", now)
