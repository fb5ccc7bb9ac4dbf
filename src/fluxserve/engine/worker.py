"""The worker loop: claim -> batch -> check -> generate -> check -> encode -> store -> end.

One path for every job: a single job is a batch of one. A claimed job gathers the queued
jobs that share its batch key (engine/batcher.py); each is checked on its own, the admitted
ones are generated in one denoising loop, and each is stored and ended on its own. The
checks (engine/moderation.py) may end a job request_moderated before anything is
generated, or replace blocked outputs by black images.

A failing job is marked Error and the loop goes on; nothing a job does ends the loop.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import io
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image
from sqlalchemy.exc import DBAPIError as DatabaseError

from fluxserve.domain import GenerationRequest, Job, JobReport, JobStatus
from fluxserve.engine.batcher import BatchPolicy, batchable, wait_for_more
from fluxserve.engine.lease import LeaseKeeper
from fluxserve.engine.moderation import Moderation
from fluxserve.errors import GenerationCancelled, LoraError, StorageError
from fluxserve.logs import job_context
from fluxserve.lora.files import LoraFiles
from fluxserve.lora.sources import describe
from fluxserve.runtime.base import GenerationInputs, LoraFile, OnStep, Runner, ShouldStop
from fluxserve.runtime.postprocess import encode_image, generation_metadata
from fluxserve.safety.checks import SafetyChecks
from fluxserve.storage.base import BlobStorage, result_key
from fluxserve.store.base import WorkerStore

logger = logging.getLogger(__name__)

PROGRESS_WRITE_INTERVAL = 0.05  # seconds; bounds database writes for very fast steps
CANCEL_CHECK_INTERVAL = 0.02  # seconds; bounds database reads for very fast steps
IDLE_RECHECK = 5.0  # seconds; a safety net only: pickup is woken by the submit event
OUTAGE_BACKOFF = (0.5, 10.0)  # seconds: first and longest wait while the database is down
FINISH_RETRIES = 5  # tries at writing a finished job's outcome through a database blip
# A job whose LoRAs are loaded is claimed before older ones, unless one of those has waited
# this long: switching adapters is cheap, starving a job is not.
LORA_PATIENCE = 10.0  # seconds
LORA_SETS_KEPT = 4


class WakeLike(Protocol):
    def wait(self, timeout: float | None = None) -> bool: ...


class FlagLike(Protocol):
    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class WorkerOptions:
    worker_id: str
    lease_seconds: float = 30.0
    metadata_prompt: bool = True
    # Applied to every output that passed its check (an invisible watermark), or None.
    mark: Callable[[Image.Image], Image.Image] | None = None
    # Embeds a signed C2PA manifest in every encoded output that passed its check, or None.
    sign: Callable[[bytes, GenerationRequest], bytes] | None = None
    max_attempts: int = 2  # a job whose images cannot be stored is retried up to this
    batch: BatchPolicy = field(default_factory=BatchPolicy)  # max_size 1: one job at a time


@dataclass
class Outcome:
    """How a job ended in the worker: stored images, or the reason it was refused."""

    keys: list[str] = field(default_factory=list)
    report: JobReport = field(default_factory=JobReport)
    refusal: str | None = None
    cancelled: bool = False  # asked to stop while its batch ran on: ends cancelled

    @property
    def status(self) -> JobStatus:
        every_image_blocked = bool(self.keys) and len(self.report.blocked_outputs) == len(self.keys)
        return JobStatus.CONTENT_MODERATED if every_image_blocked else JobStatus.SUCCEEDED


@dataclass
class Work:
    """A claimed job after its checks: the request to generate (perhaps with a rewritten
    prompt), its input images, its report so far, and the refusal if it was refused."""

    job: Job
    request: GenerationRequest
    inputs: GenerationInputs
    report: JobReport
    refusal: str | None = None


def run_batch(
    runner: Runner, batch: list[Work], on_step: OnStep, should_stop: ShouldStop
) -> list[list[Image.Image]]:
    """Each job's images from the runner: a batch of one (which may bring input images
    and ask for several images) through ``generate``, a larger batch of single-image
    text-to-image jobs (engine/batcher.py) through ``generate_batch``."""
    if len(batch) == 1:
        work = batch[0]
        return [runner.generate(work.request, work.inputs, on_step, should_stop)]
    requests = [work.request for work in batch]
    # The LoRAs are part of the batch key: every job of the batch has the first one's.
    loras = {"loras": batch[0].inputs.loras} if batch[0].inputs.loras else {}
    made = runner.generate_batch(requests, on_step, should_stop, **loras)  # type: ignore[attr-defined]
    return [[image] for image in made]


class Worker:
    def __init__(
        self,
        store: WorkerStore,
        storage: BlobStorage,
        runner: Runner,
        options: WorkerOptions,
        wake: WakeLike,
        stop: FlagLike,
        moderation: Moderation | None = None,
        loras: LoraFiles | None = None,
        abort: FlagLike | None = None,
    ) -> None:
        self.store = store
        # Set when a shutdown's grace runs out: the job in hand stops at its next step and
        # goes back to the queue for another worker (or the next server).
        self.abort = abort
        self.loras = loras  # this host's LoRA disk cache; None: jobs with LoRAs fail
        self.storage = storage
        self.runner = runner
        self.options = options
        self.moderation = moderation or Moderation(SafetyChecks())
        self.wake = wake
        self.stop = stop
        self.last_model_seconds = 0.0  # the runner's share of the last job, for the log
        self._registered = False  # in the workers table (while run() runs)
        self._current_job: str | None = None  # the job (a batch's first) in hand
        # The LoRA sets of the last jobs run (their adapters are likely still loaded).
        self._lora_sets: collections.deque[str] = collections.deque(maxlen=LORA_SETS_KEPT)
        # Its beat also refreshes this worker's row in the workers table (beat()).
        self.lease = LeaseKeeper(store, options.lease_seconds, on_beat=self.beat)

    def run(self) -> None:
        """Process jobs until ``stop`` is set; the current job is finished first."""
        logger.info("worker %s serving %s", self.options.worker_id, self.runner.name)
        self._registered = True
        try:
            self._register()
        except DatabaseError as exc:  # the next beat registers it
            logger.warning("worker %s not registered yet (%s)", self.options.worker_id,
                           type(exc).__name__)  # fmt: skip
        backoff = OUTAGE_BACKOFF[0]
        try:
            while not self.stop.is_set():
                try:
                    claimed = self.run_once()
                except DatabaseError as exc:  # the database is down or restarting
                    logger.warning("job database unavailable (%s); retrying in %.1f s",
                                   type(exc).__name__, backoff)  # fmt: skip
                    self.wake.wait(backoff)
                    backoff = min(backoff * 2, OUTAGE_BACKOFF[1])
                    continue
                backoff = OUTAGE_BACKOFF[0]
                # A submit that lands after a claim found the queue empty has set the
                # wake-up, so the wait below returns at once: no wake-up is lost.
                if not claimed:
                    self.wake.wait(IDLE_RECHECK)
        finally:
            self.lease.close()  # no beat after this
            self._registered = False
            with contextlib.suppress(DatabaseError):  # else housekeeping forgets it later
                self.store.remove_worker(self.options.worker_id)

    def _register(self) -> None:
        device = str(getattr(self.runner, "device", "") or "unknown")
        self.store.register_worker(
            self.options.worker_id, socket.gethostname(), list(self.runner.model_names), device
        )

    def beat(self) -> None:
        """Refresh this worker's row in the workers table: last seen, the job in hand, GPU
        memory. The lease keeper calls it every third of a lease (never per step)."""
        if not self._registered:
            return
        memory_stats = getattr(self.runner, "memory_stats", None)
        allocated, peak = memory_stats() if memory_stats is not None else (None, None)
        try:
            if not self.store.worker_heartbeat(
                self.options.worker_id, self._current_job, allocated, peak
            ):
                self._register()  # its row was purged after a long silence: add it again
        except DatabaseError as exc:
            logger.debug("worker heartbeat not written (%s)", type(exc).__name__)

    def run_once(self) -> bool:
        """Claim a job, and the queued jobs that can share its batch, and process them;
        False when the queue had nothing for this worker."""
        job = self.store.claim(
            self.options.worker_id, self.runner.model_names, self.options.lease_seconds,
            tuple(self._lora_sets), LORA_PATIENCE,
        )  # fmt: skip
        if job is None:
            return False
        self.process(self._gather_batch(job))
        if job.request.loras:  # its LoRAs are loaded now: prefer jobs that use them
            key = job.request.lora_set_key
            if key in self._lora_sets:
                self._lora_sets.remove(key)
            self._lora_sets.append(key)
        return True

    def _gather_batch(self, first: Job) -> list[Job]:
        """``first`` and the queued jobs that can share its batch (claimed), waiting a
        little for more when the policy allows (engine/batcher.py)."""
        policy, request = self.options.batch, first.request
        if policy.max_size <= 1 or not batchable(request.num_images, request.task.value):
            return [first]
        batch = [first]
        while True:
            batch += self.store.claim_companions(
                self.options.worker_id, first, self.runner.model_names,
                self.options.lease_seconds, policy.max_size - len(batch),
            )  # fmt: skip
            wait = wait_for_more(policy, len(batch), first.created_at, time.time())
            # Claimed jobs are not heartbeated yet: never wait near their lease's end.
            wait = min(wait, self.options.lease_seconds / 4)
            if wait <= 0:
                return batch
            time.sleep(wait)

    def process(self, jobs: list[Job]) -> None:
        """Run claimed jobs that share a batch key (a single job is a batch of one):
        check each, generate them in one loop, store and end each on its own."""
        self._current_job = jobs[0].id
        try:
            with job_context(jobs[0].id) if len(jobs) == 1 else contextlib.nullcontext():
                self._process(jobs)
        finally:
            self._current_job = None

    def _process(self, jobs: list[Job]) -> None:
        started = time.perf_counter()
        self.lease.hold(*jobs)
        if len(jobs) > 1:
            with contextlib.suppress(DatabaseError):  # advisory, for /metrics
                self.store.set_batch_size(
                    self.options.worker_id, [job.id for job in jobs], len(jobs)
                )
        live = list(jobs)  # not ended yet: what a failure below ends
        try:
            admitted = self._admit_all(live, started)  # refused jobs end now
            if not admitted:
                return
            outcomes = self._generate(admitted)
        except Exception as exc:
            self._end_all(live, exc)
            return
        finally:
            self.lease.release()
        if len(live) > 1:
            logger.info("batch of %d jobs", len(live), extra={"job_ids": [j.id for j in live]})
        for job, outcome in zip(live, outcomes, strict=True):
            self._record(job, outcome, started)

    def _admit_all(self, live: list[Job], started: float) -> list[Work]:
        """Each job checked; a refused one ends now, whatever happens to the rest of the
        batch, and leaves ``live``."""
        admitted = []
        for job in list(live):
            with job_context(job.id):
                work = self._admit(job)
            if work.refusal is not None:
                self._record(job, Outcome(report=work.report, refusal=work.refusal), started)
                live.remove(job)
            else:
                admitted.append(work)
        return admitted

    def _end_all(self, live: list[Job], exc: Exception) -> None:
        """End the jobs still running after generation stopped early: cancelled (or
        lost), back in the queue when storage failed, else failed."""
        if isinstance(exc, GenerationCancelled):  # every job still running asked for it
            for job in live:
                if self._aborting() and not self._cancel_asked(job.id):
                    # Stopped by a shutdown, not by the job: not one of its attempts.
                    if self._finish(self.store.release, job.id, job.attempt, False):
                        logger.info("job %s stopped by the shutdown; back in the queue", job.id)
                elif job.id in self.lease.lost_ids:
                    logger.info("job %s stopped: its lease was lost", job.id)
                elif self._finish(self.store.cancel_running, job.id, job.attempt):
                    logger.info("job %s cancelled while running", job.id)
            return
        if isinstance(exc, StorageError):
            for job in live:
                self._storage_failed(job, exc)
            return
        if isinstance(exc, LoraError):  # the LoRA's fault, not the server's: say which
            logger.warning("job(s) %s: %s", ", ".join(j.id for j in live), exc.message)
            for job in live:
                self._finish(self.store.fail, job.id, job.attempt, exc.code, exc.message)
            return
        ids = [job.id for job in live]
        logger.error("job(s) %s failed", ", ".join(ids), exc_info=exc, extra={"job_ids": ids})
        for job in live:
            self._finish(self.store.fail, job.id, job.attempt, "generation_failed",
                         "Generation failed on the server; the operator's log has the "
                         f"cause under job id {job.id}.")  # fmt: skip

    def _admit(self, job: Job) -> Work:
        """A job's inputs read back from storage and checked (engine/moderation.py)."""
        inputs = self._read_inputs(job)
        admitted = self.moderation.before(job, inputs)
        return Work(job, admitted.request, inputs, admitted.report, admitted.refusal)

    def _record(self, job: Job, outcome: Outcome, started: float) -> None:
        """Write how a job ended: refused, cancelled, or done with its images."""
        with job_context(job.id):
            self._record_outcome(job, outcome, started)

    def _record_outcome(self, job: Job, outcome: Outcome, started: float) -> None:
        if outcome.cancelled:
            if self._finish(self.store.cancel_running, job.id, job.attempt):
                logger.info("job %s cancelled while its batch ran", job.id)
            return
        if outcome.refusal is not None:
            if self._finish(self.store.moderate, job.id, job.attempt, outcome.report,
                            outcome.refusal):  # fmt: skip
                logger.info("job %s refused: %s", job.id, outcome.refusal)
            return
        status = outcome.status
        if self._finish(
            self.store.complete, job.id, job.attempt, outcome.keys, outcome.report, status
        ):
            logger.info(
                "job %s %s in %.1f ms (model %.1f ms)",
                job.id,
                "done" if status is JobStatus.SUCCEEDED else status.value,
                (time.perf_counter() - started) * 1000,
                self.last_model_seconds * 1000,
            )
        else:
            logger.warning("job %s finished after its lease was lost; result dropped", job.id)

    def _finish(self, write: Callable[..., bool], *args: object) -> bool:
        """A job's final write, retried through a short database outage. If it never gets
        through, the lease runs out and the job is run again: nothing is lost."""
        delay = OUTAGE_BACKOFF[0]
        for attempt in range(FINISH_RETRIES):
            try:
                return write(*args)
            except DatabaseError:
                if attempt == FINISH_RETRIES - 1:
                    logger.exception("could not record the end of job %s", args[0],
                                     extra={"job_id": args[0]})  # fmt: skip
                    return False
                time.sleep(delay)
                delay = min(delay * 2, OUTAGE_BACKOFF[1])
        return False

    def _storage_failed(self, job: Job, exc: StorageError) -> None:
        """Images that cannot be stored: back to the queue (never Ready without an image),
        and Error once the job has had its attempts."""
        extra = {"job_id": job.id}
        if job.attempt < self.options.max_attempts:
            logger.warning("job %s: storage failed (%s); back in the queue", job.id, exc,
                           extra=extra)  # fmt: skip
            self._finish(self.store.release, job.id, job.attempt)
            return
        logger.error("job %s: storage failed on its last attempt (%s)", job.id, exc, extra=extra)
        self._finish(
            self.store.fail, job.id, job.attempt, "storage_unavailable",
            "The image could not be stored; the operator's log has the cause under job id "
            f"{job.id}.",
        )  # fmt: skip

    def _generate(self, batch: list[Work]) -> list[Outcome]:
        """Generate the admitted jobs in one denoising loop, then check and store each
        one's images. One progress callback and one cancel check serve the whole batch."""
        jobs = [work.job for work in batch]
        # Counting from the start: a job shorter than the interval writes no progress.
        last_write = time.monotonic()

        def on_step(done: int, total: int, previews: list[bytes | None] | None = None) -> None:
            nonlocal last_write
            now = time.monotonic()
            # One per job of the batch, when one asked; the runtime makes at most a few a
            # second, so a preview is written even between the progress writes.
            shown = previews if previews and len(previews) == len(jobs) else [None] * len(jobs)
            # The last step is not written: completing the job sets progress 1.0.
            if done < total and (now - last_write >= PROGRESS_WRITE_INTERVAL or any(shown)):
                last_write = now
                for job, preview in zip(jobs, shown, strict=True):
                    # Progress is advisory: generation goes on without it.
                    with contextlib.suppress(DatabaseError):
                        self.store.set_progress(job.id, job.attempt, done / total,
                                                preview_entry(preview, done, total))  # fmt: skip

        cancelled: set[str] = set()
        last_check = 0.0

        def should_stop() -> bool:  # only when no job of the batch still wants its image
            nonlocal last_check
            now = time.monotonic()
            if now - last_check >= CANCEL_CHECK_INTERVAL:
                last_check = now
                for job in jobs:
                    with contextlib.suppress(DatabaseError):  # asked again at the next step
                        if job.id not in cancelled and self.store.is_cancel_requested(job.id):
                            cancelled.add(job.id)
            return self._aborting() or {job.id for job in jobs} <= cancelled | self.lease.lost_ids

        started = time.perf_counter()
        images = run_batch(self.runner, batch, on_step, should_stop)
        self.last_model_seconds = time.perf_counter() - started
        gpu = getattr(self.runner, "last_lora_report", [])
        for work in batch:  # where each LoRA came from, and what loading it took
            for disk, taken in zip(work.report.loras, gpu, strict=False):
                disk.update(taken)
        outcomes = []
        for work, made in zip(batch, images, strict=True):
            job = work.job
            if len(batch) > 1 and (job.id in cancelled or self._cancel_asked(job.id)):
                outcomes.append(Outcome(cancelled=True))  # its batch ran on for the others
                continue
            kept = self.moderation.after(work.request, made, work.report)
            keys = self._store_images(job, work.request, kept, work.report)
            outcomes.append(Outcome(keys, work.report))
        return outcomes

    def _aborting(self) -> bool:
        return self.abort is not None and self.abort.is_set()

    def _cancel_asked(self, job_id: str) -> bool:
        """Whether the job's cancel was asked for; no, while the database is unreachable
        (its completion then waits for the database and finds out there)."""
        try:
            return self.store.is_cancel_requested(job_id)
        except DatabaseError:
            return False

    def _store_images(
        self, job: Job, request: GenerationRequest, images: list[Image.Image], report: JobReport
    ) -> list[str]:
        """Mark, encode, sign and store a job's images; their keys."""
        metadata = generation_metadata(request, self.options.metadata_prompt)
        fmt = request.output_format
        keys = []
        for index, image in enumerate(images):
            passed = index not in report.blocked_outputs
            if self.options.mark is not None and passed:
                image = self.options.mark(image)
            marked = self.options.mark is not None and passed
            data = encode_image(image, fmt, metadata, full_chroma=marked)
            if self.options.sign is not None and passed:
                data = self.options.sign(data, request)
            key = result_key(job.id, job.attempt, index, fmt.value)
            self.storage.put(key, data, fmt.content_type)
            keys.append(key)
        return keys

    def _read_inputs(self, job: Job) -> GenerationInputs:
        """The job's input images, from storage (the API checked them before queueing),
        and its LoRAs, from this host's disk cache (fetched on a miss)."""
        request = job.request
        images = [_open(self.storage.get(key)) for key in request.input_keys]
        mask = _open(self.storage.get(request.mask_key)) if request.mask_key else None
        return GenerationInputs(images=images, mask=mask, loras=self._fetch_loras(job))

    def _fetch_loras(self, job: Job) -> list[LoraFile]:
        if not job.request.loras:
            return []
        if self.loras is None:
            raise LoraError("lora_unavailable", "this worker has no LoRA cache configured")
        files = []
        job.report.loras = []
        for source, scale in job.request.loras:
            downloads = self.loras.counters.downloads
            local = self.loras.fetch(source)
            fetched = "download" if self.loras.counters.downloads > downloads else "cached"
            job.report.loras.append({"lora": describe(source), "scale": scale, "disk": fetched})
            files.append(LoraFile(local.path, local.digest, describe(source), scale))
        return files


def preview_entry(jpeg: bytes | None, done: int, total: int) -> dict[str, Any] | None:
    """A job's live preview as stored and served (BFL's get_result ``preview``)."""
    if jpeg is None:
        return None
    image = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
    return {"image": image, "step": done, "steps": total}


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
