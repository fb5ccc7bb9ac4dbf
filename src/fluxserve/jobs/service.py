"""JobService: submit, look up and link jobs."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from PIL import Image
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from fluxserve.domain import GenerationRequest, Job, JobStatus, Webhook
from fluxserve.errors import InvalidRequest, JobNotFound, ServerBusy
from fluxserve.jobs.access import Admission
from fluxserve.jobs.pricing import PriceTable
from fluxserve.safety.policy import SafetyPolicy
from fluxserve.storage.base import BlobStorage, input_key, job_prefixes
from fluxserve.store.base import JobTable
from fluxserve.store.keys import ApiKey, owner_of

logger = logging.getLogger(__name__)
T = TypeVar("T")

WAIT_POLL_MIN = 0.005  # seconds between store reads while a caller waits for a job
WAIT_POLL_MAX = 0.05
DRAINING_RETRY_AFTER = 5  # seconds: a restart, or a load balancer's next replica


@dataclass(frozen=True)
class Submission:
    """Who submits a job and how: the caller's API key, the client's Idempotency-Key and
    where to announce the end."""

    key: ApiKey | None = None  # None with --auth off
    idempotency_key: str | None = None
    webhook: Webhook | None = None

    @property
    def owner(self) -> str:
        return owner_of(self.key)


ANONYMOUS = Submission()


class JobService:
    def __init__(
        self,
        store: JobTable,
        storage: BlobStorage,
        notify: Callable[[], None],
        url_ttl: int = 600,
        policy: SafetyPolicy | None = None,
        admission: Admission | None = None,
        max_images: int = 10,
        prices: PriceTable | None = None,
        max_prompt_chars: int = 10_000,
    ) -> None:
        self.store = store
        self.storage = storage
        self._notify = notify
        self.url_ttl = url_ttl
        self.policy = policy or SafetyPolicy()
        self.admission = admission
        self.max_images = max_images  # per request, every dialect (--max-images-per-request)
        self.prices = prices or PriceTable()  # what a job costs, charged to a key's budget
        self.max_prompt_chars = max_prompt_chars  # every dialect (--max-prompt-chars)
        self.draining = False  # set by a shutdown: new jobs belong to another server

    def submit(
        self,
        request: GenerationRequest,
        images: Sequence[Image.Image] = (),
        mask: Image.Image | None = None,
        submission: Submission = ANONYMOUS,
    ) -> Job:
        """Queue a job and wake the workers; returns the stored job.

        A submit carrying an Idempotency-Key its owner used before returns that first job
        instead of making another.

        Input images (already checked by the API) are stored with the job before it is
        queued, so the worker that claims it, or retries it after a crash, finds them. A
        prompt the safety policy refuses makes a job that has already ended,
        request_moderated, and queues nothing.
        """
        if self.draining:
            raise ServerBusy(
                "This server is shutting down and takes no new jobs; submit again in a few "
                "seconds (to another replica, or to this server once it is back).",
                DRAINING_RETRY_AFTER,
            )
        if request.num_images > self.max_images:
            raise InvalidRequest(
                "num_images",
                f"at most {self.max_images} images per request on this server "
                f"(--max-images-per-request), got {request.num_images}",
                request.num_images,
            )
        if len(request.prompt) > self.max_prompt_chars:
            # Checked here, the one path every dialect submits through, before the prompt
            # is screened or stored. The value is not echoed: it may be megabytes.
            raise InvalidRequest(
                "prompt",
                f"at most {self.max_prompt_chars} characters on this server "
                f"(--max-prompt-chars), got {len(request.prompt)}",
            )
        if submission.idempotency_key is not None:
            earlier = self.store.find_idempotent(submission.owner, submission.idempotency_key)
            if earlier is not None:
                return earlier
        job_id = str(uuid.uuid4())
        request, report, refusal = self.policy.admit(request)
        report.notes[:0] = request.notes  # the dialect's, first
        owned = {
            "owner": submission.owner,
            "idempotency_key": submission.idempotency_key,
            "webhook": submission.webhook,
        }
        if refusal is not None:
            now = time.time()
            job = Job(
                id=job_id,
                request=request,
                status=JobStatus.REQUEST_MODERATED,
                created_at=now,
                finished_at=now,
                error_code="request_moderated",
                error_message=refusal,
                report=report,
                **owned,
            )
            logger.info("job %s refused before queueing: %s", job_id, refusal)
            return self._create(job, submission)
        try:
            stored = [self._put_input(job_id, str(n), image) for n, image in enumerate(images)]
            mask_key = self._put_input(job_id, "mask", mask) if mask is not None else None
        except Exception:  # no job will ever own these: remove what was stored
            self._delete_blobs(job_id)
            raise
        if stored or mask_key:
            sizes = tuple(image.size for image in images)
            request = dataclasses.replace(
                request, input_keys=tuple(stored), mask_key=mask_key, input_sizes=sizes
            )
        job = Job(id=job_id, request=request, created_at=time.time(), report=report, **owned)
        try:
            created = self._create(job, submission)
        except Exception:
            self._delete_blobs(job_id)
            raise
        if created.id != job_id:  # a concurrent retry with the same key won the race
            self._delete_blobs(job_id)
            return created
        self._notify()
        return created

    def _create(self, job: Job, submission: Submission) -> Job:
        """Store ``job``; when a concurrent submit with the same Idempotency-Key stored its
        job first, that job (the unique index decides)."""
        cost = self.prices.cost(job.request)
        limits = self.admission.limits(submission.key, cost) if self.admission else None
        try:
            return self.store.create(job, limits)
        except IntegrityError:
            key = submission.idempotency_key
            earlier = self.store.find_idempotent(submission.owner, key) if key else None
            if earlier is None:
                raise
            return earlier

    async def submit_async(self, request: GenerationRequest, *parts: Any, **named: Any) -> Job:
        """``submit`` (same arguments) from async code: storage and store writes run in
        the thread pool."""
        return await run_in_threadpool(self.submit, request, *parts, **named)

    def _put_input(self, job_id: str, name: str, image: Image.Image) -> str:
        key = input_key(job_id, name)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=1)  # lossless; speed over size
        self.storage.put(key, buffer.getvalue(), "image/png")
        return key

    def _delete_blobs(self, job_id: str) -> None:
        for prefix in job_prefixes(job_id):
            self.storage.delete_prefix(prefix)

    def purge_ended(self, retention_seconds: float) -> int:
        """Delete jobs that ended more than ``retention_seconds`` ago, with their images
        (results and inputs); returns how many were deleted."""
        # Blobs first, rows after: if storage fails midway, the rows are still there and
        # the next purge tries again (rows first would leave blobs no one knows of).
        ids = self.store.ended_before(time.time() - retention_seconds)
        for job_id in ids:
            self._delete_blobs(job_id)
        self.store.delete_jobs(ids)
        if ids:
            logger.info("deleted %d job(s) older than the retention period", len(ids))
        return len(ids)

    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        """The job, or None when there is none or it belongs to another key than ``owner``
        (None: any owner, for the server's own use): another key's job looks exactly like
        one that does not exist."""
        if not _is_job_id(job_id):  # never a job: no query (PostgreSQL refuses NUL bytes)
            return None
        job = self.store.get(job_id)
        if job is None or (owner is not None and job.owner != owner):
            return None
        return job

    async def read(self, function: Callable[..., T], *args: object) -> T:
        """``function(*args)`` from async code: inline on SQLite (a WAL read never waits, and
        a thread-pool hop costs more than it), in the thread pool on a shared database (a
        network round trip must not stall the event loop)."""
        if self.store.shared:
            return await run_in_threadpool(function, *args)
        return function(*args)

    def queue_position(self, job: Job) -> int | None:
        """Queued jobs of the same model ahead of ``job`` (which the caller has just read)."""
        return self.store.queue_position(job)

    def cancel(self, job_id: str, owner: str | None = None) -> JobStatus | None:
        """Cancel a queued job, or ask its worker to stop a running one at the next step."""
        if self.get(job_id, owner) is None:
            return None
        return self.store.request_cancel(job_id)

    async def wait(
        self,
        job_id: str,
        timeout: float,
        abandoned: Callable[[], Awaitable[bool]] | None = None,
    ) -> Job:
        """The job once it has ended, polling the store (cheap reads) with a short backoff.

        ``abandoned`` says whether the caller has gone (an HTTP client that disconnected):
        then the job is cancelled, since nobody would receive its images, and the client's
        retry does not pile a second generation on top of the first.
        Raises TimeoutError when it has not ended within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        delay = WAIT_POLL_MIN
        while True:
            job = await run_in_threadpool(self.store.get, job_id)
            if job is None:
                raise JobNotFound(f"no job {job_id}")
            if job.status.is_terminal:
                return job
            if abandoned is not None and await abandoned():
                await run_in_threadpool(self.cancel, job_id)
                raise TimeoutError(f"the caller of job {job_id} went away; job cancelled")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {job.status.value} after {timeout} s")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, WAIT_POLL_MAX)

    def data_uris(self, job: Job) -> list[str]:
        """The job's images inline, as ``data:`` URIs."""
        uris = []
        for key in job.result_keys:
            content_type = f"image/{key.rsplit('.', 1)[-1]}"
            encoded = base64.b64encode(self.storage.get(key)).decode("ascii")
            uris.append(f"data:{content_type};base64,{encoded}")
        return uris

    def read_images(self, job: Job) -> list[bytes]:
        return [self.storage.get(key) for key in job.result_keys]

    def take_inline_images(self, job: Job) -> list[str] | None:
        """The images as data: URIs, handed over once and then deleted (fal's sync_mode:
        nothing is kept). None when they were already taken."""
        if not job.result_keys:
            return None
        uris = self.data_uris(job)
        if not self.store.forget_results(job.id, job.result_keys):
            return None  # another request took them first
        for key in [*job.result_keys, *job.request.blob_keys]:
            self.storage.delete(key)
        return uris

    def result_urls(self, job: Job, base_url: str) -> list[str]:
        """Fresh signed URLs for the job's images, valid for ``url_ttl`` seconds."""
        return [self.storage.url(key, base_url, self.url_ttl) for key in job.result_keys]


def _is_job_id(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except (ValueError, AttributeError):
        return False
