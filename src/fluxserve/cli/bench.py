"""``fluxserve bench``: fluxserve's engine against plain diffusers, measured in one run.

On one model, prompt, seed, size and step count, one after another in this process:

- **diffusers**: the model's own diffusers pipeline (``FluxPipeline`` or the Kontext / Fill
  class), eager: ``from_pretrained`` of the model directory (or, with ``--random-weights``,
  a fresh build of the same seeded weights), the same dtype and device as the engine, PyTorch
  SDPA attention, no fused projections, no compilation, no step cache. It gets exactly the
  arguments ``FluxRunner`` passes (seeded CPU generators, ``max_sequence_length``, guidance,
  ``inference_mode``, no progress bar).
- **fluxserve**: a ``FluxRunner`` per tier (``tiers={model: tier}``, ``--compile``), batch 1
  through ``runner.generate`` and batch b through ``runner.generate_batch`` with b requests
  of one image each (seeds ``seed .. seed+b-1``, as the baseline's b generators).

The prompt cache is off by default, so the text encoders run on every call on both sides;
``--prompt-cache`` turns it on for the engine (the JSON config says so) to show what a
repeated prompt saves.

For each (engine, tier, batch): ``--warmup`` untimed calls, then ``--runs`` timed calls, in
one of two orders (``--order``; the config records which):

- sequential (default on CUDA): one engine holds the model at a time (the last is freed
  before the next loads), so each peak-memory figure is that engine's alone;
- interleaved (default on CPU): all engines loaded at once, and each timed round calls every
  engine once, the order reversed every round. On a shared VM the machine's speed drifts by
  10-20 % within a minute; sequential rows then differ by that much for identical work
  (measured on the development VM), interleaved ones do not.

- s/image: the median of the calls' wall times (device synchronised before and after),
  divided by the batch; it includes text encoding, denoising, VAE decoding and conversion to
  PIL images. images/s is batch / that median.
- ms/step: from the start of the transformer's first call (a forward pre-hook) to the end of
  the last step (diffusers' ``callback_on_step_end``), over the steps run, median over the
  calls; on CUDA both instants are taken after a device synchronisation. A step is the
  whole batch's step.
- peak memory: ``torch.cuda.max_memory_allocated``, reset after the warm-up, so it is the
  timed calls' peak with the weights resident; null on CPU.

Nothing is estimated: every figure is measured in the run that prints it.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

DEFAULT_PROMPT = "a lighthouse on a rocky cliff at dusk, waves breaking below"
TIER_NAMES = ("lossless", "fp8", "cache")

logger = logging.getLogger(__name__)


# -- the command line ------------------------------------------------------------------------
def parse_size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    try:
        size = (int(width), int(height)) if sep else None
    except ValueError:
        size = None
    if size is None or min(size) < 64 or size[0] % 16 or size[1] % 16:
        raise argparse.ArgumentTypeError(
            f"--size must be WxH, multiples of 16 and at least 64, got {text!r}"
        )
    return size


def parse_batches(text: str) -> list[int]:
    try:
        batches = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise argparse.ArgumentTypeError(f"--batch takes sizes like 1,2,4, got {text!r}")
    return list(dict.fromkeys(batches))


def parse_tier_list(text: str) -> list[str]:
    tiers = [item.strip() for item in text.split(",") if item.strip()]
    bad = [tier for tier in tiers if tier not in TIER_NAMES]
    if not tiers or bad:
        raise argparse.ArgumentTypeError(
            f"--tiers takes a list of {', '.join(TIER_NAMES)}, got {text!r}"
        )
    return list(dict.fromkeys(tiers))


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def add_bench_parser(commands: Any) -> None:
    """Register ``fluxserve bench`` (torch-free: the parser is built for every command)."""
    bench = commands.add_parser(
        "bench",
        help="Time fluxserve's engine at each tier and batch size against plain diffusers.",
        description="Time fluxserve's engine against plain diffusers on one model, in one run.",
    )
    arg = bench.add_argument
    arg(
        "--model",
        default="tiny",
        help="Registry name, Hugging Face repo id or diffusers "
        "directory (default: tiny, built offline).",
    )
    arg(
        "--random-weights",
        action="store_true",
        help="Build the registry model "
        "(flux-schnell, flux-dev, flux-kontext-dev, flux-fill-dev) at full size with random "
        "weights, offline, instead of loading its weights.",
    )
    arg(
        "--size",
        type=parse_size,
        default=None,
        help="WxH; default: the model's default size (1024x1024; tiny 256x256).",
    )
    arg("--steps", type=positive_int, default=None, help="Default: the model's.")
    arg(
        "--tiers",
        type=parse_tier_list,
        default=list(TIER_NAMES),
        help="fluxserve tiers to time (default: lossless,fp8,cache).",
    )
    arg("--batch", type=parse_batches, default=[1, 2, 4], help="Batch sizes (default: 1,2,4).")
    arg("--runs", type=positive_int, default=5, help="Timed calls per row (default: 5).")
    arg("--warmup", type=int, default=1, help="Untimed calls before them (default: 1).")
    arg(
        "--json",
        type=Path,
        default=None,
        help="Write hardware, versions, config and results to this file.",
    )
    arg("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
    arg(
        "--compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="fluxserve's --compile (auto: on CUDA only).",
    )
    arg(
        "--cuda-graphs",
        action="store_true",
        help="fluxserve's --cuda-graphs: replay the compiled blocks as CUDA graphs.",
    )
    arg(
        "--memory-fraction",
        type=float,
        default=None,
        help="torch.cuda.set_per_process_memory_fraction(F), 0 < F <= 1; ignored on CPU.",
    )
    arg(
        "--order",
        choices=["auto", "interleaved", "sequential"],
        default="auto",
        help="interleaved: all engines loaded, timed calls alternate between them (cancels "
        "a drifting machine's speed; no peak memory); sequential: one engine at a time (its "
        "own peak memory). auto: sequential on CUDA, interleaved on CPU.",
    )
    arg(
        "--step-cache-threshold",
        type=float,
        default=None,
        help="The cache tier's First-Block threshold (default: fluxserve's).",
    )
    arg(
        "--memory-preset",
        choices=["none", "auto", "80gb", "24gb", "16gb", "12gb"],
        default="none",
        help="fluxserve's --memory-preset for the engine (default none: weights stored as "
        "the baseline's); with --memory-fraction, measures a preset on a smaller GPU.",
    )
    arg(
        "--prompt-cache",
        action="store_true",
        help="Let the engine cache prompt embeddings "
        "(default off: both sides run the text encoders on every call).",
    )
    arg("--prompt", default=DEFAULT_PROMPT)
    arg("--seed", type=int, default=0, help="Batch b uses seeds SEED .. SEED+b-1.")
    arg("--guidance", type=float, default=None, help="Default: the model's.")
    arg(
        "--threads",
        type=positive_int,
        default=None,
        help="torch CPU threads for both sides (default: what a worker picks).",
    )
    arg(
        "--data-dir",
        type=Path,
        default=None,
        help="Where the tiny model is built [env FLUXSERVE_DATA_DIR].",
    )
    arg("--log-level", default="warning")


# -- measuring -------------------------------------------------------------------------------
def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepClock:
    """The denoising loop's time: the transformer's first call to the last step's end."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.start: float | None = None
        self.end: float | None = None
        self.steps = 0

    def attach(self, transformer: Any) -> Any:
        return transformer.register_forward_pre_hook(self._first_call)

    def reset(self) -> None:
        self.start = self.end = None
        self.steps = 0

    def _first_call(self, _module: Any, _args: Any) -> None:
        if self.start is None:
            synchronize(self.device)  # the text encoders' work is done before this instant
            self.start = time.perf_counter()

    def step_end(self, done: int, total: int) -> None:
        self.steps += 1
        if done == total:
            synchronize(self.device)
            self.end = time.perf_counter()

    def ms_per_step(self) -> float:
        if self.start is None or self.end is None or not self.steps:
            raise RuntimeError("the denoising loop was not observed")
        return (self.end - self.start) * 1000.0 / self.steps


@dataclass
class Result:
    engine: str
    tier: str | None
    batch: int
    seconds: list[float] = field(default_factory=list)  # per call
    step_ms: list[float] = field(default_factory=list)  # per call
    peak_mem_gb: float | None = None
    plan: str = ""

    @property
    def s_per_image(self) -> float:
        return statistics.median(self.seconds) / self.batch

    @property
    def images_per_s(self) -> float:
        return self.batch / statistics.median(self.seconds)

    def row(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "tier": self.tier,
            "batch": self.batch,
            "s_per_image_p50": self.s_per_image,
            "ms_per_step": statistics.median(self.step_ms),
            "peak_mem_gb": self.peak_mem_gb,
            "images_per_s": self.images_per_s,
        }


def timed_call(call: Callable[[], list], clock: StepClock, result: Result) -> None:
    """One timed call into ``result``: its wall time and its denoising time per step."""
    device = clock.device
    clock.reset()
    synchronize(device)
    started = time.perf_counter()
    images = call()
    synchronize(device)
    result.seconds.append(time.perf_counter() - started)
    result.step_ms.append(clock.ms_per_step())
    if len(images) != result.batch:
        raise RuntimeError(f"{result.engine} made {len(images)} images for {result.batch}")


def warm_up(call: Callable[[], list], clock: StepClock, count: int) -> None:
    for _ in range(count):
        clock.reset()
        call()


def free_memory(device: Any) -> None:
    """Drop what the last engine left behind, compiled graphs included."""
    import torch

    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        left = torch.cuda.memory_allocated(device) / 1e9
        if left > 0.5:
            logger.warning("%.1f GB still allocated after freeing an engine", left)


# -- the model and the two engines -----------------------------------------------------------
@dataclass
class Workload:
    model: Any  # ResolvedModel
    random_weights: bool
    width: int
    height: int
    steps: int
    guidance: float | None
    prompt: str
    seed: int

    def requests(self, batch: int) -> list[Any]:
        from fluxserve.domain import GenerationRequest, Task
        from fluxserve.specs import ModelKind

        kind_tasks = {ModelKind.KONTEXT: Task.EDIT, ModelKind.FILL: Task.FILL}
        task = kind_tasks.get(self.model.spec.kind, Task.TEXT_TO_IMAGE)
        return [
            GenerationRequest(
                model=self.model.name,
                prompt=self.prompt,
                width=self.width,
                height=self.height,
                steps=self.steps,
                guidance=self.guidance,
                seed=self.seed + i,
                task=task,
            )
            for i in range(batch)
        ]

    def inputs(self) -> Any:
        """The image (and mask) a Kontext or Fill model works on; none for text-to-image."""
        from fluxserve.runtime.diffusers_runner import warmup_inputs

        return warmup_inputs(self.model.spec.kind, self.width, self.height)


def resolve_workload(args: argparse.Namespace, models_dir: Path) -> Workload:
    from fluxserve.errors import ConfigurationError
    from fluxserve.images.sizing import size_for_aspect
    from fluxserve.specs import MODEL_SPECS, ModelKind
    from fluxserve.weights import ResolvedModel, resolve_model

    if args.random_weights:
        from fluxserve.runtime.fullsize import FULLSIZE_MODELS

        if args.model not in FULLSIZE_MODELS:
            raise ConfigurationError(
                f"--random-weights builds {', '.join(FULLSIZE_MODELS)} at full size; "
                f"{args.model!r} is not one of them"
            )
        spec = MODEL_SPECS[args.model]
        model = ResolvedModel(args.model, spec, models_dir / f"{args.model}.random-weights")
    else:
        model = resolve_model(args.model, models_dir)
        if model.needs_build:
            from fluxserve.runtime.tiny import make_tiny

            make_tiny(model.path, model.spec.source.removeprefix("builtin:"))
    spec = model.spec
    text_to_image = spec.kind not in (ModelKind.KONTEXT, ModelKind.FILL)
    if not text_to_image and max(args.batch) > 1:
        raise ConfigurationError(
            f"{model.name} is a {spec.kind} model: fluxserve batches text-to-image jobs only, "
            "so bench it with --batch 1"
        )
    width, height = args.size or size_for_aspect(1.0, spec.base_area)
    return Workload(
        model=model,
        random_weights=args.random_weights,
        width=width,
        height=height,
        steps=spec.effective_steps(args.steps),
        guidance=spec.effective_guidance(args.guidance),
        prompt=args.prompt,
        seed=args.seed,
    )


def load_baseline(work: Workload, device: Any, dtype: Any) -> Any:
    """The plain diffusers pipeline: its own modules, no fluxserve optimisation."""
    from diffusers import FluxPipeline

    from fluxserve.runtime.diffusers_runner import PIPELINE_CLASSES

    if work.random_weights:
        from fluxserve.runtime.fullsize import build_fullsize_pipeline

        return build_fullsize_pipeline(work.model.name, device, dtype)
    pipeline_class = PIPELINE_CLASSES.get(work.model.spec.kind, FluxPipeline)
    pipeline = pipeline_class.from_pretrained(work.model.path, dtype=dtype).to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def baseline_call(pipeline: Any, work: Workload, batch: int, clock: StepClock) -> Callable:
    """A call of the pipeline with the arguments FluxRunner passes for ``batch`` requests."""
    import torch

    from fluxserve.runtime.diffusers_runner import kontext_area, task_arguments
    from fluxserve.specs import ModelKind

    requests, inputs = work.requests(batch), work.inputs()
    first, spec = requests[0], work.model.spec

    def step_end(pipe: Any, step: int, _timestep: Any, callback_kwargs: dict) -> dict:
        clock.step_end(step + 1, pipe.num_timesteps)
        return callback_kwargs

    def call() -> list:
        generators = [torch.Generator("cpu").manual_seed(r.seed) for r in requests]
        arguments = {
            "prompt": first.prompt if batch == 1 else [r.prompt for r in requests],
            "num_images_per_prompt": 1,
            "width": first.width,
            "height": first.height,
            "num_inference_steps": first.steps,
            "guidance_scale": first.guidance if first.guidance is not None else 0.0,
            "max_sequence_length": spec.max_sequence_length,
            "generator": generators[0] if batch == 1 else generators,
            "callback_on_step_end": step_end,
        }
        arguments.update(task_arguments(first, inputs, random_weights=spec.random_weights))
        if spec.kind is ModelKind.KONTEXT:
            arguments.update(kontext_area(first))
        with torch.inference_mode():
            return list(pipeline(**arguments).images)

    return call


def make_runner(work: Workload, tier: str, args: argparse.Namespace, threads: int,
                compile_cache_dir: Path | None) -> Any:  # fmt: skip
    """A FluxRunner serving the model at ``tier``; with random weights its model comes from
    fullsize.py (a subclass replaces only where the weights come from)."""
    from fluxserve.errors import ConfigurationError
    from fluxserve.runtime.diffusers_runner import FluxRunner
    from fluxserve.runtime.tiers import Tier

    runner_class = FluxRunner
    if work.random_weights:
        from fluxserve.runtime.fullsize import build_fullsize_pipeline

        class RandomWeightsRunner(FluxRunner):
            def _load_one(self, model: Any, dtype: Any, reuse: dict, *more: Any) -> Any:
                memory = getattr(self, "memory_plan", None)
                weights = memory.transformer_weights if memory is not None else "model-dtype"
                if weights not in ("model-dtype", "fp8"):
                    raise ConfigurationError(
                        f"--random-weights cannot build {weights} weights (bitsandbytes "
                        "quantises only while loading a checkpoint); measure that preset "
                        "on a model directory"
                    )
                # Built where the memory preset first puts it: the device, or host memory
                # for the presets that offload modules from there.
                on_host = memory is not None and memory.offload != "none"
                pipeline = build_fullsize_pipeline(
                    model.name, "cpu" if on_host else self._device, dtype
                )
                if weights == "fp8":  # what the preset's loading would have done
                    from torchao.quantization import Float8WeightOnlyConfig, quantize_

                    quantize_(pipeline.transformer, Float8WeightOnlyConfig())
                return pipeline

        runner_class = RandomWeightsRunner
    threshold = getattr(args, "step_cache_threshold", None)
    extra = {"step_cache_threshold": threshold} if threshold is not None else {}
    runner = runner_class(
        [work.model],
        device=args.device,
        threads=threads,
        prompt_cache_bytes=256 * 1024 * 1024 if args.prompt_cache else 0,
        tiers={work.model.name: Tier(tier)},
        compile_mode=args.compile,
        compile_cache_dir=compile_cache_dir,
        memory_preset=args.memory_preset,
        cuda_graphs=getattr(args, "cuda_graphs", False),
        **extra,
    )
    runner.load()
    return runner


def runner_call(runner: Any, work: Workload, batch: int, clock: StepClock) -> Callable:
    requests, inputs = work.requests(batch), work.inputs()

    def call() -> list:
        if batch == 1:
            return runner.generate(requests[0], inputs, clock.step_end, lambda: False)
        return runner.generate_batch(requests, clock.step_end, lambda: False)

    return call


@dataclass
class Engine:
    """A loaded engine: what keeps it alive, the clock on its transformer, its calls."""

    name: str  # "diffusers" or "fluxserve"
    tier: str | None
    plan: str
    holder: Any  # the pipeline or the runner
    clock: StepClock
    call_for: Callable[[int, StepClock], Callable[[], list]]

    def result(self, batch: int) -> Result:
        return Result(self.name, self.tier, batch, plan=self.plan)


def load_diffusers(work: Workload, device: Any, dtype: Any) -> Engine:
    pipeline = load_baseline(work, device, dtype)
    clock = StepClock(device)
    clock.attach(pipeline.transformer)

    def call_for(batch: int, clock: StepClock) -> Callable[[], list]:
        return baseline_call(pipeline, work, batch, clock)

    return Engine("diffusers", None, "eager diffusers, sdpa, unfused", pipeline, clock, call_for)


def load_fluxserve(
    work: Workload, tier: str, args: argparse.Namespace, device: Any, threads: int,
    compile_cache_dir: Path | None,
) -> Engine:  # fmt: skip
    runner = make_runner(work, tier, args, threads, compile_cache_dir)
    plan = runner.tier_plans[work.model.name]
    memory = [runner.memory_plan.describe()] if runner.memory_plan.preset != "none" else []
    description = "; ".join([plan.describe(), *plan.notes, *memory])
    clock = StepClock(device)
    clock.attach(runner.pipelines[work.model.name].transformer)

    def call_for(batch: int, clock: StepClock) -> Callable[[], list]:
        return runner_call(runner, work, batch, clock)

    return Engine("fluxserve", tier, description, runner, clock, call_for)


def run_sequential(
    loaders: list[tuple[str, str | None, Callable[[], Engine]]], args: argparse.Namespace,
    device: Any, failures: list[dict],
) -> list[Result]:  # fmt: skip
    """One engine on the device at a time, so each peak-memory figure is its own. Running
    out of GPU memory (a memory preset under --memory-fraction) ends that engine's rows and
    is recorded in ``failures``."""
    import torch

    results: list[Result] = []
    for name, tier, load in loaders:
        engine = None
        done: set[int] = set()
        try:
            engine = load()
            for batch in args.batch:
                call, result = engine.call_for(batch, engine.clock), engine.result(batch)
                warm_up(call, engine.clock, args.warmup)
                if device.type == "cuda":
                    synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                for _ in range(args.runs):
                    timed_call(call, engine.clock, result)
                if device.type == "cuda":
                    result.peak_mem_gb = torch.cuda.max_memory_allocated(device) / 1e9
                results.append(result)
                done.add(batch)
                print_progress(result)
        except torch.cuda.OutOfMemoryError:
            for batch in (b for b in args.batch if b not in done):
                failures.append({"engine": name, "tier": tier, "batch": batch,
                                 "error": "out of memory"})  # fmt: skip
            print(f"  {name} {tier or ''}: out of GPU memory; its remaining rows are left out")
        finally:
            engine = call = None  # this engine goes before the next one loads
            free_memory(device)
    return results


def run_interleaved(
    loaders: list[tuple[str, str | None, Callable[[], Engine]]], args: argparse.Namespace,
) -> list[Result]:  # fmt: skip
    """Every engine loaded at once; each timed round calls each of them once, the order
    reversed every round, so a machine whose speed drifts during the run (a shared VM) slows
    every engine alike. No peak memory: the engines share the device."""
    engines = [load() for _, _, load in loaders]
    by_engine: dict[int, list[Result]] = {i: [] for i in range(len(engines))}
    for batch in args.batch:
        calls = [(i, e, e.call_for(batch, e.clock), e.result(batch)) for i, e in enumerate(engines)]
        for _, engine, call, _ in calls:
            warm_up(call, engine.clock, args.warmup)
        for round_ in range(args.runs):
            for _, engine, call, result in calls if round_ % 2 == 0 else calls[::-1]:
                timed_call(call, engine.clock, result)
        for i, _, _, result in calls:
            by_engine[i].append(result)
            print_progress(result)
    return [result for i in range(len(engines)) for result in by_engine[i]]


# -- what the run reports --------------------------------------------------------------------
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


def print_progress(result: Result) -> None:
    tier = f" {result.tier}" if result.tier else ""
    print(f"  {result.engine}{tier} batch {result.batch}: {result.s_per_image:.3f} s/image",
          flush=True)  # fmt: skip


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


# -- the command -----------------------------------------------------------------------------
def check_args(args: argparse.Namespace) -> None:
    from fluxserve.errors import ConfigurationError

    if args.warmup < 0:
        raise ConfigurationError("--warmup must be 0 or more")
    if args.memory_fraction is not None and not 0 < args.memory_fraction <= 1:
        raise ConfigurationError("--memory-fraction must lie in (0, 1]")


def set_memory_fraction(fraction: float | None, device: Any) -> None:
    import torch

    if fraction is None:
        return
    if device.type != "cuda":
        logger.warning("--memory-fraction applies to CUDA devices only: ignored on %s", device)
        return
    torch.cuda.set_per_process_memory_fraction(fraction, device)


def bench(args: argparse.Namespace) -> int:
    from fluxserve.config import Settings
    from fluxserve.logs import configure_logging

    check_args(args)
    configure_logging(args.log_level)
    settings = Settings(data_dir=args.data_dir) if args.data_dir else Settings()

    import diffusers
    import transformers

    from fluxserve.runtime.device import configure_threads, pick_device, pick_dtype

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    work = resolve_workload(args, settings.models_dir)
    device = pick_device(args.device)
    dtype = pick_dtype(device)  # the dtype FluxRunner picks, for both sides
    threads = configure_threads(device, args.threads)  # as a worker sets it, for both sides
    set_memory_fraction(args.memory_fraction, device)

    hw, vers = hardware(device), versions()
    config = {
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
    print(describe_run(hw, vers, config), flush=True)

    loaders = [("diffusers", None, lambda: load_diffusers(work, device, dtype))]
    for tier in args.tiers:
        loaders.append(("fluxserve", tier, partial(
            load_fluxserve, work, tier, args, device, threads, settings.compile_cache_dir
        )))  # fmt: skip
    failures: list[dict] = []
    if config["order"] == "interleaved":
        results = run_interleaved(loaders, args)
    else:
        results = run_sequential(loaders, args, device, failures)
    config["plans"] = {r.tier or "diffusers": r.plan for r in results}
    config["failures"] = failures

    print()
    print(table(results))
    print()
    for name, plan in config["plans"].items():
        print(f"{name}: {plan}")
    if args.json:
        report = {
            "hardware": hw,
            "versions": vers,
            "config": config,
            "results": [r.row() for r in results],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
