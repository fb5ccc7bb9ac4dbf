"""Starts the worker, watches it, and recovers the jobs of workers that die.

One worker serves every loaded model, so models that share components (the FLUX.1
family's text encoders and VAE) hold them once on the device.

In process mode each worker is a spawned process: a crash (or the OOM killer) takes the
worker, not the server. The pool notices, ends the dead worker's leases so its job goes
back to the queue (or fails after ``max_attempts``), and starts a new worker. The same
watch loop sweeps expired leases, so no cron is needed.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fluxserve.config import Settings
from fluxserve.engine.child import process_main, run_worker
from fluxserve.engine.signals import Flag, Wakeup
from fluxserve.engine.unserved import CHECK_INTERVAL as UNSERVED_CHECK_INTERVAL
from fluxserve.engine.unserved import UnservedJobs
from fluxserve.safety.setup import SafetySetup
from fluxserve.store.base import STALE_AFTER_LEASES, WORKER_FORGET_AFTER, WorkerStore
from fluxserve.weights import ResolvedModel

logger = logging.getLogger(__name__)

WATCH_INTERVAL = 0.5  # seconds between liveness checks and lease sweeps
MAX_START_FAILURES = 3  # a worker that dies this often before it is ready is given up on
HOUSEKEEPING_INTERVAL = 60.0  # seconds between runs of the housekeeping task (job purge)
ABORT_MARGIN = 5.0  # seconds of a shutdown's grace kept for stopping a job at its next step


def abort_point(grace: float) -> float:
    """Seconds into a shutdown's grace at which a job still running is stopped: late enough
    to let most jobs finish, early enough that a step (seconds on a big model) and the
    release fit in what is left."""
    return max(grace - ABORT_MARGIN, grace / 2)


@dataclass
class WorkerSlot:
    models: list[ResolvedModel]
    wake: Wakeup = field(default_factory=Wakeup)
    stop: Flag = field(default_factory=Flag)
    abort: Flag = field(default_factory=Flag)  # stop the job in hand at its next step
    ready: Flag = field(default_factory=Flag)
    handle: Any = None
    worker_id: str = ""
    start_failures: int = 0
    error: str | None = None
    restarts: int = 0

    @property
    def name(self) -> str:
        return ", ".join(model.name for model in self.models)


class WorkerPool:
    def __init__(
        self,
        settings: Settings,
        models: list[ResolvedModel],
        store: WorkerStore,  # the sweep's queue writes, and the workers table
        housekeeping: Callable[[], object] | None = None,
        safety: SafetySetup | None = None,
    ) -> None:
        self.settings = settings
        self.safety = safety or SafetySetup()
        self.store = store
        self.housekeeping = housekeeping
        self._last_housekeeping = 0.0
        self.mode = settings.worker_mode
        self._ctx = multiprocessing.get_context("spawn")
        self.slots = [WorkerSlot(models)] if models else []
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="worker-pool", daemon=True)
        self._thread_count = 0
        self.unserved = UnservedJobs(
            store, settings.unserved_timeout, settings.lease_seconds, self._local_models
        )
        self._last_unserved_check = 0.0
        self._stop_lock = threading.Lock()
        self._stopper: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        for slot in self.slots:
            self._start(slot)
        self._watcher.start()

    def begin_stop(self, grace: float | None = None) -> None:
        """Start stopping, without waiting (a signal handler calls it): no worker claims
        another job, the jobs in hand have ``grace`` seconds in all (see ``stop``)."""
        with self._stop_lock:
            if self._stopper is None:
                self._stopper = threading.Thread(
                    target=self._stop, args=(grace,), name="worker-pool-stop", daemon=True
                )
                self._stopper.start()

    def stop(self, grace: float | None = None) -> None:
        """Stop every worker and wait for it (or for the stop ``begin_stop`` started).

        Without a grace the wait is unbounded: a job in hand is finished however long it
        takes. With one, a job still running near its end (``abort_point``) is stopped at
        its next step and put back in the queue, not counted as an attempt; a worker still
        alive when the grace is over is killed, and its job runs again later.
        """
        self.begin_stop(grace)
        assert self._stopper is not None
        self._stopper.join()

    def _stop(self, grace: float | None) -> None:
        started = time.monotonic()
        self._stopping.set()
        # The watcher first, so it cannot restart a worker that is exiting on request.
        if self._watcher.is_alive():
            self._watcher.join()
        for slot in self.slots:
            slot.stop.set()
            slot.wake.set()
        if grace is None:
            self._join_all(None)
            return
        self._join_all(started + abort_point(grace))
        for slot in self._alive():
            logger.warning("worker %s: the shutdown grace is running out; stopping its job "
                           "at the next step", slot.worker_id)  # fmt: skip
            slot.abort.set()
            slot.wake.set()
        self._join_all(started + grace)
        for slot in self._alive():
            if self.mode == "process":
                logger.warning("worker %s did not stop within the grace; killing it",
                               slot.worker_id)  # fmt: skip
                slot.handle.kill()  # its job's lease lapses: it runs again
                slot.handle.join(5)
            else:  # a thread cannot be killed; the process exit ends it
                logger.warning("worker %s did not stop within the grace", slot.worker_id)

    def _local_models(self) -> set[str]:
        """The models of this pool's live workers, loading ones included."""
        return {model.name for slot in self._alive() for model in slot.models}

    def _alive(self) -> list[WorkerSlot]:
        return [s for s in self.slots if s.handle is not None and s.handle.is_alive()]

    def _join_all(self, deadline: float | None) -> None:
        for slot in self._alive():
            slot.handle.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def notify(self) -> None:
        """Wake idle workers: a job was queued."""
        for slot in self.slots:
            slot.wake.set()

    def is_ready(self) -> bool:
        return bool(self.slots) and all(
            s.handle is not None and s.handle.is_alive() and s.ready.is_set() for s in self.slots
        )

    def status(self) -> list[dict[str, Any]]:
        return [
            {
                "models": [model.name for model in s.models],
                "worker_id": s.worker_id,
                "alive": bool(s.handle is not None and s.handle.is_alive()),
                "ready": s.ready.is_set(),
                "restarts": s.restarts,
                "error": s.error,
            }
            for s in self.slots
        ]

    # -- internals -----------------------------------------------------------------------
    def _start(self, slot: WorkerSlot) -> None:
        if self._stopping.is_set():
            return
        # Fresh signals for each worker, shared memory in process mode.
        ctx = self._ctx if self.mode == "process" else None
        slot.wake, slot.stop, slot.ready = Wakeup(ctx), Flag(ctx), Flag(ctx)
        slot.abort = Flag(ctx)
        args = (self.settings, slot.models, self.safety)
        if self.mode == "process":
            proc = self._ctx.Process(
                target=process_main,
                args=(*args, "", slot.wake, slot.stop, slot.ready, slot.abort),
                name="fluxserve-worker",
                daemon=False,
            )
            proc.start()
            # The child names itself the same way (host-pid), so a dead worker's leases
            # can be found by the id computed here.
            slot.worker_id = f"{socket.gethostname()}-{proc.pid}"
            slot.handle = proc
        else:
            self._thread_count += 1
            slot.worker_id = f"{socket.gethostname()}-{os.getpid()}-t{self._thread_count}"
            thread = threading.Thread(
                target=self._thread_main,
                args=(slot,),
                name="fluxserve-worker",
                daemon=True,
            )
            slot.handle = thread
            thread.start()

    def _thread_main(self, slot: WorkerSlot) -> None:
        try:
            run_worker(
                self.settings,
                slot.models,
                self.safety,
                slot.worker_id,
                slot.wake,
                slot.stop,
                slot.ready,
                slot.abort,
            )
        except Exception as exc:
            logger.exception("worker %s crashed", slot.worker_id)
            slot.error = f"{type(exc).__name__}: {exc}"

    def _watch(self) -> None:
        while not self._stopping.wait(WATCH_INTERVAL):
            try:
                self._check_workers()
                self.sweep()
                now = time.monotonic()
                # A short --unserved-timeout is looked at more often than every 5 s.
                interval = min(UNSERVED_CHECK_INTERVAL, self.settings.unserved_timeout / 4)
                if now - self._last_unserved_check >= interval:
                    self._last_unserved_check = now
                    self.unserved.sweep()
                if now - self._last_housekeeping >= HOUSEKEEPING_INTERVAL:
                    self._last_housekeeping = now
                    self.forget_silent_workers()
                    if self.housekeeping:
                        self.housekeeping()
            except Exception:  # the watcher must outlive any one failure
                logger.exception("worker pool watch failed")

    def sweep(self) -> None:
        """Requeue (or fail) running jobs whose lease has expired."""
        changed = self.store.requeue_expired(self.settings.max_attempts)
        for job in changed:
            logger.warning("job %s: lease expired -> %s", job.id, job.status.value,
                           extra={"job_id": job.id})  # fmt: skip
        if changed:
            self.notify()

    def forget_silent_workers(self) -> int:
        """Delete the workers-table rows of workers (on any host) that stopped beating long
        ago without removing themselves: a host that died, a kill -9."""
        silence = max(WORKER_FORGET_AFTER, STALE_AFTER_LEASES * self.settings.lease_seconds)
        return self.store.purge_workers(time.time() - silence)

    def _check_workers(self) -> None:
        for slot in self.slots:
            if self._stopping.is_set() or slot.handle is None or slot.handle.is_alive():
                continue
            exitcode = getattr(slot.handle, "exitcode", None)
            was_ready = slot.ready.is_set()
            logger.error(
                "worker %s (%s) stopped unexpectedly (exit code %s)",
                slot.worker_id,
                slot.name,
                exitcode,
            )
            self.store.expire_leases(slot.worker_id)
            self.store.remove_worker(slot.worker_id)  # it could not say goodbye itself
            slot.start_failures = 0 if was_ready else slot.start_failures + 1
            if slot.start_failures >= MAX_START_FAILURES:
                slot.error = slot.error or (
                    f"the worker for {slot.name} died {MAX_START_FAILURES} times while "
                    "loading the models; see the log above"
                )
                logger.error("giving up on %s: %s", slot.name, slot.error)
                slot.handle = None
                continue
            slot.restarts += 1
            self._start(slot)
