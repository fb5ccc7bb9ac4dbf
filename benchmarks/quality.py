"""What do fluxserve's faster tiers do to the images? PSNR and SSIM against the lossless tier.

One run, on one model (the built-in ``tiny`` by default, any diffusers directory or registry
name, or ``--random-weights`` for a registry model at full size): for every prompt and seed,
an image from each tier (``FluxRunner`` with ``tiers={model: tier}``, as ``fluxserve bench``
builds it), each compared with the lossless tier's image of the same prompt and seed. Two
reference rows come with them:

- ``lossless (again)``: the lossless runner asked a second time: the run's own noise floor
  (identical on CPU; CUDA kernels may differ in the last bits);
- ``diffusers``: the plain diffusers pipeline with the same arguments (``--no-diffusers``
  skips it): how far fluxserve's lossless tier (fused QKV, attention kernel, compilation) is
  from plain diffusers.

PSNR: 10·log10(255² / MSE) over all pixels and channels of the 8-bit images; identical
images have an infinite PSNR (``null`` with ``"identical": true`` in JSON).

SSIM: neither scikit-image nor torchmetrics is installed in this project's environment, so
``ssim`` below implements the standard one (Wang, Bovik, Sheikh and Simoncelli, IEEE TIP 2004):
an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255, population
(co)variances, the map's mean over the valid region (no padding), per RGB channel and then
averaged over the channels: what scikit-image's ``structural_similarity(...,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
channel_axis=-1)`` computes.

Usage (from the repository root)::

    .venv/bin/python benchmarks/quality.py [--model tiny] [--tiers lossless,fp8,cache]
        [--prompt P ...] [--seeds 0,1,2] [--size WxH] [--steps N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fluxserve.runtime.bench import (
    StepClock,
    Workload,
    baseline_call,
    free_memory,
    hardware,
    load_baseline,
    make_runner,
    parse_size,
    parse_tier_list,
    resolve_workload,
    versions,
)

PROMPTS = [
    "a lighthouse on a rocky cliff at dusk, waves breaking below",
    "a bowl of ramen on a wooden table, steam rising, soft window light",
    "a red fox in fresh snow, looking at the camera",
]

# Wang et al. 2004
WINDOW, SIGMA, K1, K2 = 11, 1.5, 0.01, 0.03


# -- the metrics -----------------------------------------------------------------------------
def as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """An 8-bit image as a float64 H x W x C array."""
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if array.ndim == 2:
        array = array[:, :, None]
    return array.astype(np.float64)


def psnr(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray, data_range=255.0) -> float:
    """Peak signal-to-noise ratio in dB; ``inf`` for identical images."""
    x, y = as_array(a), as_array(b)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {x.shape} and {y.shape}")
    mse = float(np.mean((x - y) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def gaussian_window(size: int = WINDOW, sigma: float = SIGMA) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray, data_range=255.0) -> float:
    """Mean structural similarity (Gaussian window, per channel, channels averaged)."""
    x = torch.from_numpy(as_array(a)).permute(2, 0, 1)  # C x H x W
    y = torch.from_numpy(as_array(b)).permute(2, 0, 1)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {tuple(x.shape)} and {tuple(y.shape)}")
    channels = x.shape[0]
    if min(x.shape[1:]) < WINDOW:
        raise ValueError(f"SSIM needs images of at least {WINDOW}x{WINDOW} pixels")
    window = gaussian_window().expand(channels, 1, WINDOW, WINDOW)

    def local_mean(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t[None], window, groups=channels)[0]

    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = local_mean(x * x) - mu_x * mu_x
    var_y = local_mean(y * y) - mu_y * mu_y
    cov = local_mean(x * y) - mu_x * mu_y
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    )
    return float(ssim_map.mean())


# -- generating ------------------------------------------------------------------------------
def cases(work: Workload, prompts: list[str], seeds: list[int]) -> list[Workload]:
    return [replace(work, prompt=p, seed=s) for p in prompts for s in seeds]


def runner_images(runner: Any, items: list[Workload]) -> list[Image.Image]:
    images = []
    for item in items:
        request, inputs = item.requests(1)[0], item.inputs()
        images.extend(runner.generate(request, inputs, lambda *_: None, lambda: False))
    return images


def generate_all(
    args: argparse.Namespace, work: Workload, items: list[Workload], compile_cache: Path
) -> dict[str, list[Image.Image]]:
    """Every tier's images (and the references'), one engine on the device at a time."""
    from fluxserve.runtime.device import configure_threads, pick_device, pick_dtype

    device = pick_device(args.device)
    threads = configure_threads(device, args.threads)
    images: dict[str, list[Image.Image]] = {}
    for tier in args.tiers:
        runner = make_runner(work, tier, args, threads, compile_cache)
        images[tier] = runner_images(runner, items)
        if tier == "lossless":
            images["lossless (again)"] = runner_images(runner, items)
        del runner
        free_memory(device)
    if not args.no_diffusers:
        pipeline = load_baseline(work, device, pick_dtype(device))
        clock = StepClock(device)
        images["diffusers"] = [baseline_call(pipeline, item, 1, clock)()[0] for item in items]
        del pipeline
        free_memory(device)
    return images


def compare(images: dict[str, list[Image.Image]], items: list[Workload]) -> dict[str, Any]:
    """Each set's PSNR and SSIM against the lossless tier's image of the same case."""
    reference = images["lossless"]
    per_image, means = [], {}
    for name, produced in images.items():
        if name == "lossless":
            continue
        scores = []
        for item, ref, img in zip(items, reference, produced, strict=True):
            value = psnr(ref, img)
            scores.append((value, ssim(ref, img)))
            per_image.append({
                "tier": name, "prompt": item.prompt, "seed": item.seed,
                "psnr": None if math.isinf(value) else value, "identical": math.isinf(value),
                "ssim": scores[-1][1],
            })  # fmt: skip
        means[name] = {
            "psnr": statistics.fmean(s[0] for s in scores),  # inf when any is identical
            "ssim": statistics.fmean(s[1] for s in scores),
            "min_ssim": min(s[1] for s in scores),
            "identical": sum(math.isinf(s[0]) for s in scores),
            "images": len(scores),
        }
    return {"images": per_image, "means": means}


def print_report(report: dict[str, Any]) -> None:
    print(f"{'vs lossless':<18} {'seed':>5} {'PSNR dB':>8} {'SSIM':>8}  prompt")
    for row in report["images"]:
        value = "inf" if row["identical"] else f"{row['psnr']:.2f}"
        print(f"{row['tier']:<18} {row['seed']:>5} {value:>8} {row['ssim']:>8.5f}  "
              f"{row['prompt'][:48]}")  # fmt: skip
    print()
    print(f"{'mean vs lossless':<18} {'PSNR dB':>8} {'SSIM':>8} {'min SSIM':>9} identical")
    for name, m in report["means"].items():
        value = "inf" if math.isinf(m["psnr"]) else f"{m['psnr']:.2f}"
        print(f"{name:<18} {value:>8} {m['ssim']:>8.5f} {m['min_ssim']:>9.5f} "
              f"{m['identical']}/{m['images']}")  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--tiers", type=parse_tier_list, default=["lossless", "fp8", "cache"],
                        help="lossless is always included: it is the reference")  # fmt: skip
    parser.add_argument("--prompt", action="append", default=None, help="Repeatable.")
    parser.add_argument("--seeds", default="0,1", help="Comma-separated.")
    parser.add_argument("--size", type=parse_size, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--step-cache-threshold", type=float, default=None,
                        help="The cache tier's threshold (default: fluxserve's)")  # fmt: skip
    parser.add_argument("--no-diffusers", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    args.tiers = ["lossless", *(t for t in args.tiers if t != "lossless")]
    args.prompts = args.prompt or PROMPTS
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    # What fluxserve.runtime.bench's helpers read.
    args.prompt, args.seed, args.batch, args.prompt_cache = args.prompts[0], 0, [1], False
    args.memory_preset = "none"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    import diffusers
    import transformers

    from fluxserve.config import Settings

    args = parse_args(argv)
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    settings = Settings(data_dir=args.data_dir) if args.data_dir else Settings()
    work = resolve_workload(args, settings.models_dir)
    items = cases(work, args.prompts, args.seed_list)
    images = generate_all(args, work, items, settings.compile_cache_dir)
    report = compare(images, items)
    print(f"{work.model.name} at {work.width}x{work.height}, {work.steps} steps, "
          f"{len(items)} images per tier")  # fmt: skip
    print_report(report)
    if args.json:
        from fluxserve.runtime.device import pick_device

        config = {
            "model": work.model.name, "random_weights": work.random_weights,
            "width": work.width, "height": work.height, "steps": work.steps,
            "guidance": work.guidance, "prompts": args.prompts, "seeds": args.seed_list,
            "tiers": args.tiers, "compile": args.compile,
            "step_cache_threshold": args.step_cache_threshold,
        }  # fmt: skip
        full = {"hardware": hardware(pick_device(args.device)), "versions": versions(),
                "config": config, **report}  # fmt: skip
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(full, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
