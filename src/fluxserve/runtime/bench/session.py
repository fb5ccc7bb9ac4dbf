"""A whole bench run: the workload, device and config (``prepare``), then every engine's
rows (``measure``)."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from fluxserve.runtime.bench.engines import (
    Workload,
    load_diffusers,
    load_fluxserve,
    resolve_workload,
)
from fluxserve.runtime.bench.report import hardware, run_config, versions
from fluxserve.runtime.bench.timing import Progress, Result, run_interleaved, run_sequential

logger = logging.getLogger(__name__)


@dataclass
class BenchSetup:
    """What the run measures and where: both engines get the same device, dtype, threads."""

    work: Workload
    device: Any
    dtype: Any
    threads: int
    hw: dict[str, Any]
    vers: dict[str, str | None]
    config: dict[str, Any]


def set_memory_fraction(fraction: float | None, device: Any) -> None:
    import torch

    if fraction is None:
        return
    if device.type != "cuda":
        logger.warning("--memory-fraction applies to CUDA devices only: ignored on %s", device)
        return
    torch.cuda.set_per_process_memory_fraction(fraction, device)


def prepare(args: argparse.Namespace, models_dir: Path) -> BenchSetup:
    """Resolve (or build) the model, pick the device, dtype and threads, record the config."""
    import diffusers
    import transformers

    from fluxserve.runtime.device import configure_threads, pick_device, pick_dtype

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    work = resolve_workload(args, models_dir)
    device = pick_device(args.device)
    dtype = pick_dtype(device)  # the dtype FluxRunner picks, for both sides
    threads = configure_threads(device, args.threads)  # as a worker sets it, for both sides
    set_memory_fraction(args.memory_fraction, device)
    config = run_config(args, work, device, dtype, threads)
    return BenchSetup(work, device, dtype, threads, hardware(device), versions(), config)


def measure(
    setup: BenchSetup, args: argparse.Namespace, compile_cache_dir: Path | None,
    progress: Progress,
) -> list[Result]:  # fmt: skip
    """Time diffusers, then fluxserve at each tier, in the config's order; adds the engines'
    ``plans`` and the rows that ran out of memory (``failures``) to ``setup.config``."""
    work, device, dtype, threads = setup.work, setup.device, setup.dtype, setup.threads
    loaders = [("diffusers", None, lambda: load_diffusers(work, device, dtype))]
    for tier in args.tiers:
        loaders.append(("fluxserve", tier, partial(
            load_fluxserve, work, tier, args, device, threads, compile_cache_dir
        )))  # fmt: skip
    failures: list[dict] = []
    if setup.config["order"] == "interleaved":
        results = run_interleaved(loaders, args, progress)
    else:
        results = run_sequential(loaders, args, device, failures, progress)
    setup.config["plans"] = {r.tier or "diffusers": r.plan for r in results}
    setup.config["failures"] = failures
    return results
