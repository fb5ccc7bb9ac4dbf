"""The job store's role protocols: the durable job table that is also the queue.

Each user depends on the role it uses (``JobTable``, ``WorkQueue``, ``WebhookOutbox``,
``WorkerRegistry``, ``JobStats``); ``JobStore`` is all of them, for the composition root.

Every write that a worker makes names the job's ``attempt``: it is the fencing token of the
worker's lease. When a lease expires and the job is claimed again, the attempt grows, and the
old worker's late writes match no row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fluxserve.domain import Job, JobReport, JobStatus

# A worker whose row was not refreshed for this many leases is shown as stale (it beats
# every third of a lease), and housekeeping deletes rows silent for WORKER_FORGET_AFTER.
STALE_AFTER_LEASES = 3
WORKER_FORGET_AFTER = 3600.0  # seconds


@dataclass(frozen=True)
class WorkerRecord:
    """A row of the workers table: a worker process that claims jobs, on some host."""

    id: str
    host: str
    models: list[str]
    device: str
    started_at: float
    last_seen: float
    current_job: str | None = None
    gpu_memory_bytes: int | None = None  # torch.cuda.memory_allocated; None off CUDA
    gpu_memory_peak_bytes: int | None = None  # torch.cuda.max_memory_allocated

    def is_stale(self, lease_seconds: float, now: float) -> bool:
        return now - self.last_seen > STALE_AFTER_LEASES * lease_seconds


@dataclass(frozen=True)
class EndedJob:
    """What /metrics needs of a job that ended: its outcome and its times."""

    seq: int
    id: str
    model: str
    status: JobStatus
    steps: int
    created_at: float
    started_at: float | None  # None: it ended before any worker started it
    finished_at: float
    batch_size: int | None
    loras: list[dict] = field(default_factory=list)  # the report's, one per LoRA


class JobTable(Protocol):
    """Jobs as the API sees them: submitted, read, cancelled, cleaned up."""

    shared: bool  # other hosts' workers use it too (PostgreSQL)

    def create(self, job: Job, limits: Any = None) -> Job:
        """Insert a queued job; returns it with its queue sequence number. ``limits``
        (tables.SubmitLimits) refuse it atomically past its key's or the server's limit."""
        ...

    def get(self, job_id: str) -> Job | None: ...

    def find_idempotent(self, owner: str, idempotency_key: str) -> Job | None:
        """The job ``owner`` submitted with ``idempotency_key``, if any."""
        ...

    def queue_position(self, job: Job) -> int | None:
        """How many queued jobs of the same model are ahead of this one (None if not queued)."""
        ...

    def queued_counts(self) -> dict[str, int]:
        """Queued jobs per model."""
        ...

    def request_cancel(self, job_id: str) -> JobStatus | None:
        """Cancel a queued job, or flag a running one for its worker; the status after."""
        ...

    def forget_results(self, job_id: str, result_keys: list[str]) -> bool:
        """Empty the result keys if they are still ``result_keys``; True for the one winner."""
        ...

    def ended_before(self, finished_before: float, limit: int = 500) -> list[str]:
        """Ids of jobs that ended before ``finished_before`` (at most ``limit``)."""
        ...

    def delete_jobs(self, job_ids: list[str]) -> int:
        """Delete these ended jobs' rows; how many were deleted."""
        ...

    def purge_ended(self, finished_before: float, limit: int = 500) -> list[str]:
        """Delete jobs that ended before ``finished_before`` (at most ``limit``); their ids."""
        ...


class WorkQueue(Protocol):
    """The queue as the workers see it: claims, leases fenced by attempt, ends, the sweep."""

    def claim(self, worker_id: str, models: list[str], lease_seconds: float,
              prefer: Sequence[str] = (), patience: float = 0.0) -> Job | None:  # fmt: skip
        """Take the oldest queued job of one of ``models``; the job becomes running. With
        ``prefer`` (LoRA set keys), a job whose LoRAs are among them comes first, unless an
        older job has waited ``patience`` seconds."""
        ...

    def claim_batch(
        self, worker_id: str, models: list[str], lease_seconds: float, limit: int
    ) -> list[Job]:
        """The oldest queued job and up to ``limit - 1`` queued jobs sharing its batch key."""
        ...

    def claim_companions(
        self, worker_id: str, first: Job, models: list[str], lease_seconds: float, limit: int
    ) -> list[Job]:
        """Up to ``limit`` more queued jobs sharing ``first``'s batch key, claimed."""
        ...

    def heartbeat(self, job_id: str, attempt: int, lease_seconds: float) -> bool:
        """Extend the lease; False when the lease was lost (the job is not ours any more)."""
        ...

    def set_progress(
        self, job_id: str, attempt: int, progress: float, preview: dict[str, Any] | None = None
    ) -> bool:
        """Progress 0..1 of a running job (fenced by attempt) and, when given, its latest
        live preview; the preview is cleared when the job stops running."""
        ...

    def complete(
        self,
        job_id: str,
        attempt: int,
        result_keys: list[str],
        report: JobReport | None = None,
        status: JobStatus = JobStatus.SUCCEEDED,
    ) -> bool: ...

    def moderate(self, job_id: str, attempt: int, report: JobReport, message: str) -> bool:
        """End a running job REQUEST_MODERATED (fenced by attempt, like every write)."""
        ...

    def fail(self, job_id: str, attempt: int | None, code: str, message: str) -> bool:
        """Mark failed; ``attempt`` None fails a queued job that no worker holds."""
        ...

    def release(self, job_id: str, attempt: int, count_attempt: bool = True) -> bool:
        """Running -> queued, fenced by attempt: the worker could not finish the job (with
        ``count_attempt=False``, a shutdown stopped it: the attempt is given back)."""
        ...

    def is_cancel_requested(self, job_id: str) -> bool: ...

    def cancel_running(self, job_id: str, attempt: int) -> bool:
        """The worker's acknowledgement of a cancel: running -> cancelled (fenced)."""
        ...

    def expire_leases(self, worker_id: str) -> int:
        """End the leases of a worker known to be dead, so the next sweep requeues its jobs."""
        ...

    def expire_all_leases(self) -> int:
        """End every running lease: only for a store that a single server owns (SQLite)."""
        ...

    def requeue_expired(self, max_attempts: int, now: float | None = None) -> list[Job]:
        """Running jobs whose lease expired go back to the queue, or fail past max attempts."""
        ...

    def queued_counts(self) -> dict[str, int]:
        """Queued jobs per model (the sweep's view of what waits)."""
        ...

    def fail_queued(self, model: str, queued_before: float, code: str, message: str) -> list[Job]:
        """End Error the jobs of ``model`` queued before ``queued_before`` that are still
        queued; the jobs ended."""
        ...

    def set_batch_size(self, worker_id: str, job_ids: list[str], size: int) -> int:
        """Record that these running jobs of ``worker_id`` run as one batch of ``size``
        (a claim sets 1)."""
        ...


class WebhookOutbox(Protocol):
    """Webhook deliveries of ended jobs, claimed in turn by the dispatchers."""

    def due_webhooks(self, now: float, limit: int, hold_seconds: float) -> list[Job]:
        """Claim up to ``limit`` due webhook deliveries of ended jobs (each one's attempt
        count grows by one; no one else takes it for ``hold_seconds``)."""
        ...

    def record_webhook(
        self, job_id: str, attempts: int, state: str, next_at: float | None, error: str | None
    ) -> bool:
        """The outcome of delivery attempt ``attempts`` (fenced by it)."""
        ...


class WorkerRegistry(Protocol):
    """The workers table: which worker processes run, where, and what they hold."""

    def register_worker(
        self, worker_id: str, host: str, models: list[str], device: str, now: float | None = None
    ) -> None: ...

    def worker_heartbeat(
        self,
        worker_id: str,
        current_job: str | None,
        gpu_memory_bytes: int | None = None,
        gpu_memory_peak_bytes: int | None = None,
        now: float | None = None,
    ) -> bool:
        """Refresh the worker's row; False when there is none (it must register again)."""
        ...

    def remove_worker(self, worker_id: str) -> bool: ...

    def list_workers(self) -> list[WorkerRecord]: ...

    def purge_workers(self, seen_before: float) -> int:
        """Delete the rows of workers last seen before ``seen_before``."""
        ...


class JobStats(Protocol):
    """Read-only views for observability (/metrics, ``fluxserve status``)."""

    def active_counts(self) -> dict[str, dict[str, int]]:
        """Queued and running jobs per model: {model: {"queued": n, "running": m}}."""
        ...

    def running_jobs(self, limit: int = 100) -> list[Job]: ...

    def ended_since(
        self, finished_at: float, after_seq: int = 0, limit: int = 1000
    ) -> list[EndedJob]:
        """Ended jobs after (``finished_at``, ``after_seq``) in that order (a page)."""
        ...


class WorkerStore(WorkQueue, WorkerRegistry, Protocol):
    """What the engine's worker uses: the queue, and its own row in the workers table."""


class JobStore(JobTable, WorkQueue, WebhookOutbox, WorkerRegistry, JobStats, Protocol):
    """Every role at once, and the database's lifecycle: for the composition root only.
    Everyone else depends on the role it uses."""

    def ping(self) -> bool:
        """Whether the database answers."""
        ...

    def listen(self, on_wake: Callable[[], None], stop: Callable[[], bool]) -> None:
        """Call ``on_wake`` when another process queues jobs, until ``stop()``."""
        ...

    def close(self) -> None: ...
