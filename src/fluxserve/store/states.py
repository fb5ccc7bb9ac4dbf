"""The job state machine: every allowed transition, in one table.

Stores guard each write with ``sources_of(target)``, so a write that would break the machine
(a late result from a worker that lost its lease, a second completion) changes nothing.
"""

from __future__ import annotations

from fluxserve.domain import JobStatus

Q, R = JobStatus.QUEUED, JobStatus.RUNNING

TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({R, JobStatus.CANCELLED, JobStatus.FAILED}),
    # running -> queued is a lease that expired: the worker died and the job is retried.
    JobStatus.RUNNING: frozenset(
        {
            Q,
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
            JobStatus.REQUEST_MODERATED,  # a check on the worker refused prompt or input
            JobStatus.CONTENT_MODERATED,
        }
    ),
}


def sources_of(target: JobStatus) -> list[JobStatus]:
    """States from which ``target`` may be entered (used as a WHERE guard by stores)."""
    return [state for state, targets in TRANSITIONS.items() if target in targets]
