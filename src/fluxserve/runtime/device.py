"""Device and dtype choice: bf16 on CUDA, float32 on CPU."""

from __future__ import annotations

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
