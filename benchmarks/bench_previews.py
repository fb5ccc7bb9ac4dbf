"""What a live preview costs beside a denoising step: tiny models (FLUX.1 and FLUX.2), CPU.

For each model and size, in one run:

- step: the median time between two consecutive ``callback_on_step_end`` calls of a
  plain generation (one transformer pass and one scheduler step);
- preview: the median time ``Previews`` takes to make one preview from that loop's real
  latents: the estimate of the final latents, the colour map, the JPEG;
- per step: the preview's cost spread over the steps it is made for (one preview every
  ``steps // 8`` steps), as a share of a step;
- job with / without: whole ``FluxRunner.generate`` calls with ``previews`` on and off,
  alternated, median (the fit is made before, once).

The tiny models' transformer is a toy, so a step here is far cheaper than a real model's
(hundreds of milliseconds on a GPU at 1 MP) while the preview costs the same: the share
printed is an upper bound for real models.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_previews.py [--repeats 5] [--steps 24]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fluxserve.domain import GenerationRequest
from fluxserve.runtime.base import GenerationInputs
from fluxserve.runtime.diffusers_runner import FluxRunner, loop_arguments
from fluxserve.runtime.previews import EVERY_FRACTION, Previews
from fluxserve.runtime.tiny import make_tiny
from fluxserve.weights import resolve_model

SIZES = (256, 512, 1024)


def step_times(runner: FluxRunner, request: GenerationRequest) -> tuple[float, list]:
    """Median seconds per step of a plain loop, and the loop's latents at every step."""
    name = runner.model_names[0]
    pipeline, spec = runner.pipelines[name], runner.models[name].spec
    stamps: list[float] = []
    latents: list[torch.Tensor] = []

    def keep(_pipe, _step, _timestep, kwargs):
        stamps.append(time.perf_counter())
        latents.append(kwargs["latents"])
        return kwargs

    with torch.inference_mode():
        pipeline(prompt=request.prompt, **loop_arguments(request, spec), output_type="latent",
                 generator=torch.Generator().manual_seed(1), callback_on_step_end=keep)  # fmt: skip
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:], strict=False)), latents


def preview_time(runner: FluxRunner, request: GenerationRequest, latents: list) -> float:
    """Median seconds to make one preview from the loop's real latents (no throttling)."""
    pipeline = runner.pipelines[runner.model_names[0]]
    previews = Previews(runner._previewer(pipeline), request.width, request.height, [0],
                        clock=iter(range(0, 10**6, 10)).__next__)  # fmt: skip
    # Replays the loop's latents; the scheduler stands where the loop left it, so the
    # estimate reads the last sigmas: the same arithmetic as at any step.
    timings = []
    for done, step_latents in enumerate(latents[:-1], start=1):
        started = time.perf_counter()
        made = previews.at_step(pipeline, done, len(latents), step_latents)
        if made is not None and done > 1:
            timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def job_time(runner: FluxRunner, request: GenerationRequest) -> float:
    started = time.perf_counter()
    runner.generate(request, GenerationInputs(), lambda *a, **k: None, lambda: False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=24)
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
          f"threads, torch {torch.__version__}, CPU")  # fmt: skip
    print("| model | size | step ms | preview ms | preview per step | job ms without | with |")
    print("|---|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as directory:
        for variant in ("tiny", "tiny-flux2"):
            path = make_tiny(Path(directory) / variant, variant)
            runner = FluxRunner([resolve_model(str(path), path.parent)])
            runner.load()
            name = runner.model_names[0]
            runner._previewer(runner.pipelines[name])  # the one-off fit, not timed here
            guidance = runner.models[name].spec.effective_guidance(None)
            for size in SIZES:
                plain = GenerationRequest(model=name, prompt="a lighthouse", width=size,
                                          height=size, steps=args.steps, guidance=guidance,
                                          seed=1)  # fmt: skip
                watched = GenerationRequest(**{**plain.__dict__, "previews": True})
                step, latents = step_times(runner, plain)
                preview = statistics.median(
                    preview_time(runner, plain, latents) for _ in range(args.repeats)
                )
                every = max(1, args.steps // EVERY_FRACTION)
                jobs = {False: [], True: []}
                for index in range(args.repeats * 2):
                    request = watched if index % 2 else plain
                    jobs[request.previews].append(job_time(runner, request))
                without, with_ = (statistics.median(jobs[k]) * 1000 for k in (False, True))
                cells = [variant, f"{size}x{size}", f"{step * 1000:.1f}",
                         f"{preview * 1000:.2f}", f"{preview / every / step:.1%}",
                         f"{without:.0f}", f"{with_:.0f}"]  # fmt: skip
                print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
