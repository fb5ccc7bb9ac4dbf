"""What a bench run reports: hardware and versions, its config, the results table with its
ratios, and the JSON file."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

from fluxserve.runtime.bench.engines import Workload
from fluxserve.runtime.bench.timing import Result


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: Any) -> dict[str, Any]:
    import torch

    from fluxserve.runtime.device import usable_cores

    info: dict[str, Any] = {
        "device": str(device),
        "gpu": None,
        "gpu_capability": None,
        "gpu_memory_gb": None,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9,
        "torch_threads": torch.get_num_threads(),
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_capability"] = f"{props.major}.{props.minor}"
        info["gpu_memory_gb"] = props.total_memory / 1e9
    return info


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    from fluxserve import __version__

    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("torch", "diffusers", "transformers", "torchao"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    if found["torchao"] is None:
        del found["torchao"]
    found["fluxserve"] = __version__
    return found


def ratio(numerator: float | None, denominator: float | None) -> str:
    if not numerator or not denominator:
        return "n/a"
    return f"{numerator / denominator:.2f}x"


def spread(seconds: list[float]) -> str:
    """The calls' range (slowest - fastest) as a share of their median: the run's noise."""
    return f"{100 * (max(seconds) - min(seconds)) / statistics.median(seconds):.0f}%"


def table(results: list[Result]) -> str:
    """The results with three ratios: speed-up (s/image) against diffusers at batch 1 and at
    the same batch, and images/s against the same engine and tier at batch 1. ``range`` is
    the timed calls' spread: ratios closer to 1 than it are within the run's noise."""
    diffusers = {r.batch: r for r in results if r.engine == "diffusers"}
    solo = {(r.engine, r.tier): r for r in results if r.batch == 1}
    base1 = diffusers.get(1)
    header = (
        f"{'engine':<10} {'tier':<9} {'batch':>5} {'s/image p50':>12} {'range':>6} {'ms/step':>10} "
        f"{'images/s':>9} {'peak GB':>8} {'vs diff b1':>11} {'vs diff same b':>15} "
        f"{'img/s vs b1':>12}"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        same = diffusers.get(r.batch)
        own1 = solo.get((r.engine, r.tier))
        peak = f"{r.peak_mem_gb:.2f}" if r.peak_mem_gb is not None else "-"
        lines.append(
            f"{r.engine:<10} {r.tier or '-':<9} {r.batch:>5} {r.s_per_image:>12.4f} "
            f"{spread(r.seconds):>6} "
            f"{statistics.median(r.step_ms):>10.2f} {r.images_per_s:>9.3f} {peak:>8} "
            f"{ratio(base1 and base1.s_per_image, r.s_per_image):>11} "
            f"{ratio(same and same.s_per_image, r.s_per_image):>15} "
            f"{ratio(r.images_per_s, own1 and own1.images_per_s):>12}"
        )
    return "\n".join(lines)


def describe_run(hw: dict, vers: dict, config: dict) -> str:
    where = hw["gpu"] or hw["cpu"]
    weights = "random weights, full size" if config["random_weights"] else "its weights"
    return (
        f"{config['model']} ({weights}) at {config['width']}x{config['height']}, "
        f"{config['steps']} steps, "
        f"{config['dtype']} on {hw['device']} ({where}; {hw['usable_cores']} cores, "
        f"{hw['torch_threads']} torch threads); {config['runs']} timed runs after "
        f"{config['warmup']} warm-up; prompt cache {'on' if config['prompt_cache'] else 'off'}; "
        f"torch {vers['torch']}, diffusers {vers['diffusers']}"
    )


def run_config(
    args: argparse.Namespace, work: Workload, device: Any, dtype: Any, threads: int
) -> dict[str, Any]:
    """The run's settings as the JSON records them (``plans`` and ``failures`` come later)."""
    return {
        "model": work.model.name,
        "source": work.model.spec.source,
        "random_weights": work.random_weights,
        "width": work.width,
        "height": work.height,
        "steps": work.steps,
        "guidance": work.guidance,
        "prompt": work.prompt,
        "seed": work.seed,
        "tiers": args.tiers,
        "batches": args.batch,
        "runs": args.runs,
        "warmup": args.warmup,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "compile": args.compile,
        "prompt_cache": args.prompt_cache,
        "memory_preset": args.memory_preset,
        "step_cache_threshold": args.step_cache_threshold,
        "order": args.order
        if args.order != "auto"
        else ("sequential" if device.type == "cuda" else "interleaved"),
        "memory_fraction": args.memory_fraction if device.type == "cuda" else None,
        "threads": threads,
    }


def write_report(path: Path, hw: dict, vers: dict, config: dict, results: list[Result]) -> None:
    """Hardware, versions, config and results, as JSON, at ``path``."""
    report = {
        "hardware": hw,
        "versions": vers,
        "config": config,
        "results": [r.row() for r in results],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
