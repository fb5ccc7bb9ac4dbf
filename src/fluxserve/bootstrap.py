"""The composition root: builds store, storage, job service and workers from Settings.

The only module that knows every concrete class. It reaches the engine (and so torch)
lazily, inside ``Services.start``, so importing the API stays light.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from fluxserve.config import Settings
from fluxserve.domain import Job
from fluxserve.errors import ConfigurationError, DataDirLocked
from fluxserve.images.inputs import ImageReader
from fluxserve.jobs.access import Admission, KeyRing
from fluxserve.jobs.loras import LoraRequests
from fluxserve.jobs.pricing import PriceTable
from fluxserve.jobs.routing import ModelRouter
from fluxserve.jobs.served import ServedModels
from fluxserve.jobs.service import JobService
from fluxserve.jobs.webhooks import WebhookBody, WebhookDispatcher
from fluxserve.lora.sources import LoraPolicy
from fluxserve.runtime.tiers import parse_tiers
from fluxserve.safety.policy import SafetyPolicy
from fluxserve.safety.setup import SafetySetup, resolve_safety
from fluxserve.safety.terms import load_terms
from fluxserve.specs import ModelSpec
from fluxserve.storage.base import BlobStorage
from fluxserve.storage.opening import open_storage
from fluxserve.store.keys import KeyStore
from fluxserve.store.loras import LoraRegistry
from fluxserve.store.opening import open_store
from fluxserve.store.sql import SqlJobStore
from fluxserve.weights import ResolvedModel, resolve_model

logger = logging.getLogger(__name__)


def lock_data_dir(settings: Settings) -> IO[str]:
    """Hold an exclusive lock on the data dir: the SQLite store has one owner."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(settings.data_dir / "server.lock", "w")  # noqa: SIM115 (held for life)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DataDirLocked(
            f"Another fluxserve server is using {settings.data_dir}; stop it or pass a "
            "different --data-dir."
        ) from None
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def lora_policy(settings: Settings) -> LoraPolicy:
    """Which LoRA paths requests may name, from the settings."""
    return LoraPolicy(settings.allow_lora_urls, settings.allow_hub_loras, settings.lora_dir,
                      settings.url_policy)  # fmt: skip


@dataclass
class Services:
    settings: Settings
    models: dict[str, ResolvedModel]
    store: SqlJobStore
    storage: BlobStorage
    router: ModelRouter
    safety: SafetySetup = field(default_factory=SafetySetup)
    workers: Any = None  # engine.pool.WorkerPool, imported lazily
    webhooks: WebhookDispatcher | None = None
    # dialect -> its webhook body builder (register_webhook_body)
    webhook_bodies: dict[str, WebhookBody] = field(default_factory=dict)
    jobs: JobService = field(init=False)
    keys: KeyRing = field(init=False)
    images: ImageReader = field(init=False)
    prices: PriceTable = field(init=False)
    loras: LoraRequests = field(init=False)
    started_at: float = field(default_factory=time.time)
    _lock: IO[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.prices = PriceTable.load(self.settings.price_table)
        policy = SafetyPolicy(
            load_terms(self.settings.blocked_terms), self.settings.max_safety_tolerance
        )
        key_store = KeyStore(self.store.engine)
        self.keys = KeyRing(key_store)
        self.jobs = JobService(
            self.store,
            self.storage,
            self.notify,
            self.settings.result_url_ttl,
            policy,
            Admission(key_store, self.settings.max_queue),
            self.settings.max_images_per_request,
            self.prices,
            max_prompt_chars=self.settings.max_prompt_chars,
        )
        self.images = ImageReader(self.settings.image_limits, self.settings.url_policy)
        self.loras = LoraRequests(LoraRegistry(self.store.engine), lora_policy(self.settings))

    def start(self) -> None:
        """Recover jobs left running by a previous server, then start the workers."""
        self.check_auth()
        self.check_hosts()
        if not self.store.shared:
            self._lock = self._lock or lock_data_dir(self.settings)
            from fluxserve.engine.worker_locks import stop_stale_workers

            # A worker of the last server that outlived it may still run a job: it goes
            # first, so the job below runs once, and the GPU is free for our workers.
            stop_stale_workers(self.settings.data_dir)
            # Only this server uses this SQLite file (the lock above), so every job still
            # marked running lost its worker when the last server stopped. (A shared
            # store's running jobs may belong to live workers elsewhere: their leases say.)
            if self.store.expire_all_leases():
                for job in self.store.requeue_expired(self.settings.max_attempts):
                    logger.warning("job %s left by the last server -> %s", job.id,
                                   job.status.value)  # fmt: skip
        for model, count in self.store.queued_counts().items():
            if model not in self.models and not self.router.learns:
                logger.warning(
                    "%d queued job(s) wait for model %s, which this server does not load; "
                    "they run when a server with --model %s starts",
                    count, model, model,
                )  # fmt: skip
        from fluxserve.engine.pool import WorkerPool

        retention = self.settings.job_retention
        # An API-only replica (--no-worker) still sweeps expired leases and purges old jobs.
        self.workers = WorkerPool(
            self.settings,
            list(self.models.values()) if self.settings.worker else [],
            self.store,
            housekeeping=lambda: self.jobs.purge_ended(retention),
            safety=self.safety,
        )
        self.workers.start()
        # Every server process delivers webhooks (claims keep replicas from doubling up).
        self.webhooks = WebhookDispatcher(
            self.store,
            self.webhook_payload,
            self.settings.url_policy,
            timeout=self.settings.webhook_timeout,
            retry_window=self.settings.webhook_retry_window,
        )
        self.webhooks.start()

    def register_webhook_body(self, dialect: str, build: WebhookBody) -> None:
        """Let a dialect build the webhook bodies of the jobs submitted through it (the
        dialects own their wire formats; api/app.py registers them)."""
        self.webhook_bodies[dialect] = build

    def webhook_payload(self, job: Job) -> dict[str, Any]:
        """The JSON announcing ``job``'s end in its submit's dialect, with fresh signed
        image URLs on the base URL the submit used."""
        assert job.webhook is not None
        base = job.webhook.base_url or self.settings.public_url or ""
        build = self.webhook_bodies.get(job.webhook.dialect)
        if build is None:
            raise LookupError(f"no webhook body is registered for {job.webhook.dialect!r}")
        return build(job, self.jobs, base)

    def check_auth(self) -> None:
        """A server that requires keys and has none would refuse everyone: refuse to start."""
        if self.settings.auth_required and not self.keys.keys.has_live_keys():
            raise ConfigurationError(
                f"--host {self.settings.host} is not a loopback address, so API keys are "
                "required, and there are none: create one with `fluxserve keys create --name "
                "NAME` (with the same --data-dir / --database), or pass --auth off to serve "
                "without keys."
                if self.settings.auth == "auto"
                else "--auth required and there are no API keys: create one with "
                "`fluxserve keys create --name NAME`, or pass --auth off."
            )

    def check_hosts(self) -> None:
        """Off loopback, links built from the Host header would point wherever a client
        says: refuse to start unless links have a fixed base or the Host is checked."""
        settings = self.settings
        if settings.loopback_host or settings.public_url or settings.allowed_hosts:
            return
        raise ConfigurationError(
            f"--host {settings.host} is reachable from other machines, and the links in "
            "answers (polling URLs, image URLs) would follow the request's Host header, which "
            "any client sets: pass --public-url https://HOST (links use it) and/or "
            "--allowed-hosts HOST[,HOST...] (requests naming another host get 400)."
        )

    def begin_shutdown(self) -> None:
        """SIGTERM: take no new jobs (503 with Retry-After), and start stopping the workers
        within --shutdown-grace (engine/pool.py). Returns at once: a signal handler calls it."""
        if self.jobs.draining:
            return
        self.jobs.draining = True
        logger.info("shutting down: no new jobs; the jobs in hand have %.0f s to finish",
                    self.settings.shutdown_grace)  # fmt: skip
        if self.workers is not None:
            self.workers.begin_stop(self.settings.shutdown_grace)

    def stop(self) -> None:
        self.begin_shutdown()
        if self.workers is not None:
            self.workers.stop(self.settings.shutdown_grace)
        # Deliveries still pending are in the job table: the next start makes them.
        if self.webhooks is not None:
            self.webhooks.stop()
            self.webhooks = None
        self.store.close()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def notify(self) -> None:
        if self.workers is not None:
            self.workers.notify()

    def is_ready(self) -> bool:
        if self.workers is None:
            return False
        if not self.settings.worker:  # an API replica is ready when its database answers
            return self.store.ping()
        return self.workers.is_ready()


def resolve_models(settings: Settings) -> dict[str, ResolvedModel]:
    models: dict[str, ResolvedModel] = {}
    for ref in settings.model:
        resolved = resolve_model(ref, settings.models_dir, weights=settings.worker)
        if resolved.name in models:
            raise ConfigurationError(
                f"--model {ref} and another --model both load a model named {resolved.name}; "
                "load each model once."
            )
        models[resolved.name] = resolved
    try:  # a MODEL=TIER naming no loaded model fails here, before anything loads
        parse_tiers(settings.tier, list(models))
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    return models


def build_services(settings: Settings, models: dict[str, ResolvedModel] | None = None) -> Services:
    """Everything the server needs, built but not started (no workers yet)."""
    learn = not settings.worker and "model" not in settings.model_fields_set
    if models is None:
        models = {} if learn else resolve_models(settings)
    if settings.watermark and importlib.util.find_spec("imwatermark") is None:
        raise ConfigurationError(
            "--watermark needs the invisible-watermark package: pip install 'fluxserve[watermark]'"
        )
    if settings.c2pa_cert is not None and settings.c2pa_key is not None:
        from fluxserve.runtime.provenance import c2pa_signer

        c2pa_signer(settings.c2pa_cert, settings.c2pa_key)  # fails now, in one sentence
    if not settings.worker and not settings.database:
        raise ConfigurationError(
            "--no-worker runs an API replica of a cluster: give it the shared job database "
            "(--database postgresql://...); with SQLite, serve runs its own workers."
        )
    if settings.database and not settings.storage:
        logger.warning(
            "cluster mode with images in the data dir: every API replica and worker must "
            "share --data-dir %s (a shared volume), or use --storage s3://...",
            settings.data_dir,
        )
    # An API-only replica needs no classifier weights: the workers run the classifiers.
    safety = resolve_safety(settings, models.values()) if settings.worker else SafetySetup()
    store = open_store(settings)
    storage = open_storage(settings)
    # An API replica without --model routes to what the live workers serve; with --model,
    # to those models only (an allow-list), as a server with workers does.
    served = ServedModels(store, served_spec(settings), settings.lease_seconds) if learn else None
    router = ModelRouter({n: m.spec for n, m in models.items()}, settings.alias_map, served)
    return Services(settings, models, store, storage, router, safety=safety)


def served_spec(settings: Settings) -> Callable[[str], ModelSpec]:
    """A served model's name -> its spec, resolved as --model NAME would be, no weights."""
    return lambda name: resolve_model(name, settings.models_dir, weights=False).spec
