"""Device and dtype choice: bf16 on CUDA, float32 on CPU."""

from __future__ import annotations

import os

import torch


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} was asked for but no CUDA GPU is visible")
    return device


def pick_dtype(device: torch.device) -> torch.dtype:
    # bf16 is what FLUX was trained in; CPUs run float32 far faster and more exactly.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_threads(device: torch.device, requested: int | None) -> int:
    """Set torch's intra-op thread count for a worker; returns the count in force.

    On CPU a worker leaves one core to the API process: when it runs on every core, each
    request the API serves preempts one of torch's threads and the others wait for it at
    every parallel region, which slowed generation 2-3x under polling on 2 cores
    (docs/benchmarks.md). OMP_NUM_THREADS, when set, is respected.
    """
    if requested is not None:
        torch.set_num_threads(requested)
    elif device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, usable_cores() - 1))
    return torch.get_num_threads()
