"""The model and the two engines: plain diffusers and a FluxRunner per tier, each loaded with
a step clock on its transformer and a call per batch size."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluxserve.runtime.bench.timing import Engine, StepClock


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
        from fluxserve.runtime.fullsize import FULLSIZE_MODELS  # FLUX.1's and FLUX.2's

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

    from fluxserve.runtime.diffusers_runner import loop_arguments, task_arguments

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
            **loop_arguments(first, spec),
            "generator": generators[0] if batch == 1 else generators,
            "callback_on_step_end": step_end,
        }
        arguments.update(task_arguments(first, inputs, spec))
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
