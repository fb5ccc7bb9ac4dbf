"""Webhook delivery: POST a job's end to the URL its submit named. Torch-free.

A ``WebhookDispatcher`` runs in every server process (API replicas included), in its own
threads, so a slow or dead receiver never holds up generation or the API:

- Every ``POLL_INTERVAL`` it claims the due deliveries from the job store
  (``due_webhooks``: ended jobs whose ``webhook_state`` is pending and whose next try is
  due). A claim moves the job's next try past the time an attempt can take, atomically
  (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so several replicas never deliver the same
  attempt twice.
- Each claimed delivery is one POST, made by a small thread pool: the receiver's host is
  resolved and checked by the same guard as image URLs (loopback, private, link-local and
  reserved addresses are refused unless ``--allow-private-urls``), the connection is pinned
  to the checked address, redirects are not followed, and no proxy from the environment is
  used.
- Outcome: any 2xx is delivered. A refused address, a redirect or a 4xx other than 408, 425
  and 429 fails at once (the receiver or the policy said no; asking again changes nothing).
  Timeouts, connection errors, 408/425/429 and 5xx are retried after ``RETRY_DELAYS`` (1 s,
  5 s, 30 s, 2 min, then every 10 min) until the retry window after the job's end has
  passed; then the delivery is failed with the last error.
- The outcome is written on the job (``record_webhook``: state, attempt count, last error)
  and logged with the job id.

Delivery is at least once: a process that dies mid-POST leaves the attempt to be made
again by whoever claims it next, so receivers should de-duplicate on the job id.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from fluxserve import __version__
from fluxserve.addresses import AddressRefused, UrlPolicy, allowed_address, pin_url
from fluxserve.domain import Job
from fluxserve.store.base import WebhookOutbox

if TYPE_CHECKING:
    from fluxserve.jobs.service import JobService

logger = logging.getLogger(__name__)

RETRY_DELAYS: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0, 600.0)  # the last one repeats
POLL_INTERVAL = 0.5  # seconds between looks for due deliveries (an indexed read)
MAX_CONCURRENT = 8  # deliveries in flight per process
RETRYABLE_STATUS = frozenset({408, 425, 429})  # and every 5xx
MAX_URL_LENGTH = 2083
USER_AGENT = f"fluxserve/{__version__} (webhook)"
ERROR_CHARS = 500  # a receiver's answer is cut to this much in the recorded error

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
# An attempt ends at this many timeouts, however the receiver dribbles out its answer.
ATTEMPT_DEADLINE_FACTOR = 3
MAX_SECRET_LENGTH = 256


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot receive webhooks, or None: a syntax check only (http(s), a host,
    a valid port, no credentials); the address is checked at each delivery, since DNS may
    change between submit and delivery."""
    if not url or len(url) > MAX_URL_LENGTH:
        return f"must be 1 to {MAX_URL_LENGTH} characters"
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        return "must not contain spaces or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not 0-65535)
    except ValueError:
        return "is not a valid URL (check the host and port)"
    if parts.scheme not in ("http", "https"):
        return "must be an http(s) URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username is not None or parts.password is not None:
        return "must not carry a user name or password"
    try:
        parts.hostname.encode("idna")
    except UnicodeError:
        return "has a host name that cannot be encoded (IDNA)"
    return None


def secret_problem(secret: str) -> str | None:
    """Why ``secret`` cannot travel in the X-Webhook-Secret header, or None."""
    if not 1 <= len(secret) <= MAX_SECRET_LENGTH:
        return f"must be 1 to {MAX_SECRET_LENGTH} characters"
    if not all(32 <= ord(ch) < 127 for ch in secret):
        return "must be printable ASCII (it is sent as an HTTP header)"
    return None


@dataclass(frozen=True)
class Outcome:
    """What one delivery attempt came to."""

    delivered: bool
    retry: bool = False  # worth another attempt later (a timeout, a 5xx)
    error: str | None = None


def post(url: str, body: bytes, headers: dict[str, str], policy: UrlPolicy,
         timeout: float) -> Outcome:  # fmt: skip
    """POST ``body`` to ``url`` once, under the address policy; never raises for the
    receiver's or the network's sake."""
    host = urlsplit(url).hostname or ""
    try:
        address = allowed_address(host, policy)
    except AddressRefused as refused:
        if refused.unresolved:  # DNS may be down for a moment: worth another try
            return Outcome(False, retry=True, error=f"the host {host} does not resolve")
        return Outcome(
            False, error=f"the webhook URL is refused by the address policy: {refused.reason}"
        )
    pinned, host_header, extensions = pin_url(url, address)
    headers = {**headers, **host_header}
    # trust_env off: an operator's HTTP(S)_PROXY must not carry these requests elsewhere.
    client = httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False)
    # httpx's timeout bounds each read; a receiver that trickles its answer a byte at a time
    # would hold the attempt for ever. The watchdog closes the connection at the deadline.
    watchdog = threading.Timer(ATTEMPT_DEADLINE_FACTOR * timeout, client.close)
    watchdog.start()
    try:
        with (
            client,
            client.stream(
                "POST", pinned, content=body, headers=headers, extensions=extensions
            ) as response,
        ):
            status = response.status_code  # the body is not read: only the status counts
    except httpx.TimeoutException:
        return Outcome(False, retry=True, error=f"no answer within {timeout:g} s")
    except (httpx.HTTPError, RuntimeError) as exc:  # RuntimeError: closed by the watchdog
        if not watchdog.is_alive():
            return Outcome(False, retry=True, error=f"no answer within "
                           f"{ATTEMPT_DEADLINE_FACTOR * timeout:g} s")  # fmt: skip
        return Outcome(False, retry=True, error=f"{type(exc).__name__}: {exc}"[:ERROR_CHARS])
    except (UnicodeError, ValueError) as exc:  # a header httpx cannot send: never will
        return Outcome(False, error=f"the request could not be sent: {exc}"[:ERROR_CHARS])
    finally:
        watchdog.cancel()
    if 200 <= status < 300:
        return Outcome(True)
    if status >= 500 or status in RETRYABLE_STATUS:
        return Outcome(False, retry=True, error=f"the receiver answered HTTP {status}")
    if 300 <= status < 400:
        return Outcome(False, error=f"the receiver answered HTTP {status} (redirects are "
                                    "not followed)")  # fmt: skip
    return Outcome(False, error=f"the receiver answered HTTP {status}")


def retry_delay(attempts: int, delays: Sequence[float] = RETRY_DELAYS) -> float:
    """Seconds to wait after failed attempt number ``attempts`` (1-based)."""
    return delays[min(attempts, len(delays)) - 1]


Render = Callable[[Job], dict[str, Any]]
# A dialect's webhook body: (the ended job, the job service for its image links, the base
# URL the submit used) -> the JSON to POST. Each dialect registers its own (api/app.py).
WebhookBody = Callable[[Job, "JobService", str], dict[str, Any]]


class WebhookDispatcher:
    """Delivers the webhooks of ended jobs from ``store``; ``render`` makes a job's JSON
    body in its dialect (with fresh signed image URLs)."""

    def __init__(
        self,
        store: WebhookOutbox,
        render: Render,
        policy: UrlPolicy,
        timeout: float = 10.0,
        retry_window: float = 3600.0,
        delays: Sequence[float] | None = None,
        poll_interval: float | None = None,
        concurrency: int = MAX_CONCURRENT,
    ) -> None:
        self.store = store
        self.render = render
        self.policy = policy
        self.timeout = timeout
        self.retry_window = retry_window
        self.delays = tuple(delays or RETRY_DELAYS)
        self.poll_interval = POLL_INTERVAL if poll_interval is None else poll_interval
        self.concurrency = concurrency
        # An attempt is a DNS lookup, then connect, send and the answer's head (each
        # bounded by the timeout): past this another dispatcher may take the delivery over.
        self.hold_seconds = 4 * timeout + 30.0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._stopping.clear()
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="webhook")
        self._thread = threading.Thread(target=self._loop, name="webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop claiming; wait for the deliveries in flight (each bounded by the timeout).
        Claimed deliveries that had not started are made later, by whoever claims next."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _loop(self) -> None:
        while not self._stopping.wait(self.poll_interval):
            try:
                self.dispatch_due()
            except Exception:  # e.g. the database is away for a moment: next tick
                logger.exception("looking for due webhooks failed")

    # -- work ----------------------------------------------------------------------------
    def dispatch_due(self) -> int:
        """Claim the due deliveries this process has room for and start them; how many."""
        assert self._pool is not None, "start() first"
        with self._lock:
            free = self.concurrency - self._in_flight
        if free <= 0:
            return 0
        claimed = self.store.due_webhooks(time.time(), free, self.hold_seconds)
        for job in claimed:
            with self._lock:
                self._in_flight += 1
            self._pool.submit(self._deliver_then_release, job)
        return len(claimed)

    def _deliver_then_release(self, job: Job) -> None:
        try:
            self.deliver(job)
        except Exception as exc:  # a bug, not the receiver: record it rather than loop
            logger.exception("job %s: webhook delivery crashed", job.id)
            with contextlib.suppress(Exception):
                failure = Outcome(False, error=f"delivery crashed: {type(exc).__name__}")
                self._record(job, job.webhook_attempts, failure)
        finally:
            with self._lock:
                self._in_flight -= 1

    def deliver(self, job: Job) -> Outcome:
        """Make the attempt ``job`` was claimed for, and record its outcome."""
        assert job.webhook is not None
        attempt = job.webhook_attempts
        ended = job.finished_at or job.created_at
        if attempt > 1 and time.time() > ended + self.retry_window + self.hold_seconds:
            # Only claims that were lost (a dispatcher died mid-attempt) get here this late.
            outcome = Outcome(False, error="the retry window passed")
            self._record(job, attempt, outcome)
            return outcome
        try:
            body = json.dumps(self.render(job)).encode()
        except Exception as exc:  # e.g. storage could not sign a URL just now
            logger.warning("job %s: webhook body could not be made: %s", job.id, exc)
            outcome = Outcome(False, retry=True, error=f"the payload could not be made ({exc})")
        else:
            headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
            if job.webhook.secret is not None:
                headers["X-Webhook-Secret"] = job.webhook.secret
            outcome = post(job.webhook.url, body, headers, self.policy, self.timeout)
        self._record(job, attempt, outcome)
        return outcome

    def _record(self, job: Job, attempt: int, outcome: Outcome) -> None:
        host = urlsplit(job.webhook.url).hostname if job.webhook else None
        if outcome.delivered:
            state, next_at = DELIVERED, None
            logger.info("job %s: webhook delivered to %s (attempt %d)", job.id, host, attempt)
        else:
            now = time.time()
            next_at = now + retry_delay(attempt, self.delays)
            ended = job.finished_at or job.created_at
            if outcome.retry and next_at <= ended + self.retry_window:
                state = PENDING
                logger.info("job %s: webhook to %s failed (attempt %d: %s); retrying in %.3g s",
                            job.id, host, attempt, outcome.error, next_at - now)  # fmt: skip
            else:
                state, next_at = FAILED, None
                why = "gave up" if outcome.retry else "not retried"
                logger.warning("job %s: webhook to %s failed after %d attempt(s), %s: %s",
                               job.id, host, attempt, why, outcome.error)  # fmt: skip
        if not self.store.record_webhook(job.id, attempt, state, next_at, outcome.error):
            logger.warning("job %s: webhook attempt %d outlived its claim; another server "
                           "took the delivery over", job.id, attempt)  # fmt: skip
