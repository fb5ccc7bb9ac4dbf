"""Measuring: the step clock, timed calls, and the two orders the engines run in."""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

Progress = Callable[[str], None]  # receives each line the run reports as it goes


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


def progress_line(result: Result) -> str:
    tier = f" {result.tier}" if result.tier else ""
    return f"  {result.engine}{tier} batch {result.batch}: {result.s_per_image:.3f} s/image"


def run_sequential(
    loaders: list[tuple[str, str | None, Callable[[], Engine]]], args: argparse.Namespace,
    device: Any, failures: list[dict], progress: Progress,
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
                progress(progress_line(result))
        except torch.cuda.OutOfMemoryError:
            for batch in (b for b in args.batch if b not in done):
                failures.append({"engine": name, "tier": tier, "batch": batch,
                                 "error": "out of memory"})  # fmt: skip
            progress(f"  {name} {tier or ''}: out of GPU memory; its remaining rows are left out")
        finally:
            engine = call = None  # this engine goes before the next one loads
            free_memory(device)
    return results


def run_interleaved(
    loaders: list[tuple[str, str | None, Callable[[], Engine]]], args: argparse.Namespace,
    progress: Progress,
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
            progress(progress_line(result))
    return [result for i in range(len(engines)) for result in by_engine[i]]
