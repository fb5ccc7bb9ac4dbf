"""What runs inside a worker (a spawned process or a thread): build, load, serve."""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import threading
from typing import TYPE_CHECKING

from fluxserve.config import Settings
from fluxserve.engine.batcher import BatchPolicy
from fluxserve.engine.moderation import Moderation
from fluxserve.engine.signals import Flag, Wakeup
from fluxserve.engine.worker import Worker, WorkerOptions
from fluxserve.engine.worker_locks import hold_worker_lock
from fluxserve.lora.files import LoraFiles
from fluxserve.prompting.upsample import UpsamplingFailed, build_upsampler
from fluxserve.runtime.provenance import c2pa_signer
from fluxserve.runtime.tiers import parse_tiers
from fluxserve.runtime.watermark import watermarker
from fluxserve.safety.setup import SafetySetup, build_checks
from fluxserve.weights import ResolvedModel

if TYPE_CHECKING:
    from fluxserve.runtime.diffusers_runner import FluxRunner

logger = logging.getLogger(__name__)


def run_worker(
    settings: Settings,
    models: list[ResolvedModel],
    safety: SafetySetup,
    worker_id: str,
    wake: Wakeup,
    stop: Flag,
    ready: Flag,
    abort: Flag | None = None,
) -> None:
    """Load ``models`` and process their jobs until ``stop`` is set; ``abort`` stops the
    job in hand at its next step and puts it back in the queue."""
    from fluxserve.runtime.device import pick_device
    from fluxserve.runtime.diffusers_runner import FluxRunner  # torch stays out of the API
    from fluxserve.storage.opening import open_storage
    from fluxserve.store.opening import open_store

    store = open_store(settings, migrate=False)  # the server migrated it before starting us
    storage = open_storage(settings)
    # On a shared store (PostgreSQL), jobs queued by other hosts wake this worker too.
    threading.Thread(
        target=store.listen, args=(wake.set, stop.is_set), name="job-listener", daemon=True
    ).start()
    runner = FluxRunner(
        models,
        device=settings.device,
        threads=settings.torch_threads,
        on_demand=settings.load_models == "on-demand",
        prompt_cache_bytes=settings.prompt_cache_mb * 1024 * 1024,
        tiers=parse_tiers(settings.tier, [model.name for model in models]),
        compile_mode=settings.compile,
        compile_cache_dir=settings.compile_cache_dir,
        step_cache_threshold=settings.step_cache_threshold,
        memory_preset=settings.memory_preset,
        cuda_graphs=settings.cuda_graphs,
        max_loaded_loras=settings.max_loaded_loras,
    )
    runner.load()
    warm_up(runner, settings.warmup)
    device = str(pick_device(settings.device))
    checks = build_checks(safety, settings, device)
    checks.load()
    upsampler = build_upsampler(
        settings.prompt_upsampler,
        settings.prompt_upsampler_model,
        settings.prompt_upsampler_timeout,
        safety.upsampler_model,
        device,
    )
    if upsampler is not None:
        try:
            upsampler.load()
        except UpsamplingFailed as exc:  # each job then says so in its notes
            logger.error("prompt upsampler %s unavailable: %s", upsampler.name, exc)
    moderation = Moderation(checks, upsampler)
    ready.set()
    options = WorkerOptions(
        worker_id,
        settings.lease_seconds,
        settings.metadata_prompt,
        mark=watermarker() if settings.watermark else None,
        sign=c2pa_signer(settings.c2pa_cert, settings.c2pa_key) if settings.c2pa_cert else None,
        max_attempts=settings.max_attempts,
        batch=BatchPolicy(batch_size(settings, runner), settings.max_batch_wait_ms / 1000),
    )
    try:
        Worker(
            store, storage, runner, options, wake, stop, moderation, lora_files(settings), abort
        ).run()
    finally:
        store.close()


def lora_files(settings: Settings) -> LoraFiles:
    """This host's LoRA disk cache, in the data dir (shared by its workers)."""
    return LoraFiles(
        settings.data_dir / "loras",
        int(settings.lora_cache_gb * 1024**3),
        settings.max_lora_bytes,
        settings.url_policy,
    )


def batch_size(settings: Settings, runner: FluxRunner) -> int:
    """--max-batch-size; by default 1 on a low-memory preset, where a batch's activations
    may not fit beside the weights."""
    low_memory = runner.memory_plan.preset not in ("none", "80gb")
    if low_memory and "max_batch_size" not in settings.model_fields_set:
        logger.info("memory preset %s: one job at a time (--max-batch-size to change)",
                    runner.memory_plan.preset)  # fmt: skip
        return 1
    return settings.max_batch_size


def warm_up(runner: FluxRunner, warmup: list[str]) -> None:
    """``--warmup``: auto warms each model at its default size when it was compiled (the
    first call compiles; a job should not wait for that), off skips, WxH lists sizes."""
    if "off" in warmup:
        return
    sizes = [tuple(map(int, size.split("x"))) for size in warmup if size != "auto"]
    if sizes:
        runner.warm_up(sizes)
    elif any(plan.compile for plan in runner.tier_plans.values()):
        runner.warm_up()


def _exit_with_parent() -> None:
    """Exit at once when the server process ends, however it ends (kill -9 included): a
    worker left running would hold the GPU, and run its job beside the next server's
    worker. The job in hand is not lost: its lease lapses and the next server runs it."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    # The parent holds the write end of this pipe; it closes when the parent dies.
    multiprocessing.connection.wait([parent.sentinel])
    logger.warning("the server process is gone; this worker exits now")
    logging.shutdown()
    os._exit(1)


def process_main(
    settings: Settings,
    models: list[ResolvedModel],
    safety: SafetySetup,
    worker_id: str,
    wake: Wakeup,
    stop: Flag,
    ready: Flag,
    abort: Flag,
) -> None:
    """Entry point of a spawned worker process."""
    from fluxserve.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    # Ctrl-C reaches the whole process group; the server stops its workers itself, after
    # they finish the job in hand, so the worker ignores SIGINT. A SIGTERM stops it after
    # the job in hand; a second one stops that job at its next step.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: _stop_or_abort(stop, abort, wake))
    worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
    threading.Thread(target=_exit_with_parent, name="parent-watch", daemon=True).start()
    # The embedded store's data dir has one server: a lock tells its next server whether
    # this worker still runs (engine/worker_locks.py).
    lock = None if settings.database else hold_worker_lock(settings.data_dir)
    try:
        run_worker(settings, models, safety, worker_id, wake, stop, ready, abort)
    finally:
        if lock is not None:
            lock.close()


def _stop_or_abort(stop: Flag, abort: Flag, wake: Wakeup) -> None:
    (abort if stop.is_set() else stop).set()
    wake.set()
