"""Applies a ``TierPlan`` to a loaded pipeline: fused projections, attention kernel, FP8
linear layers, regional compilation and the step cache. Each part is a library's own
switch (diffusers, torchao, torch.compile); this module only decides the order."""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from fluxserve.runtime.tiers import STEP_CACHE_THRESHOLD, Capabilities, TierPlan

logger = logging.getLogger(__name__)

# diffusers attention backends, best first, and the package each needs. Only exact kernels:
# SageAttention's int8 attention is faster but changes images, so no tier picks it.
ATTENTION_BACKENDS = (
    ("_flash_3", "flash_attn_interface"),  # FlashAttention 3: Hopper
    ("flash", "flash_attn"),  # FlashAttention 2
)


def probe(device: torch.device) -> Capabilities:
    """Read what this machine can run off torch and the installed packages."""
    if device.type != "cuda":
        return Capabilities(
            device_type=device.type,
            # Inductor's CPU backend compiles C++; without a compiler torch.compile fails.
            can_compile=shutil.which(os.environ.get("CXX", "g++")) is not None,
        )
    backends = tuple(
        name for name, package in ATTENTION_BACKENDS if importlib.util.find_spec(package)
    )
    return Capabilities(
        device_type="cuda",
        cuda_capability=torch.cuda.get_device_capability(device),
        have_torchao=importlib.util.find_spec("torchao") is not None,
        attention_backends=backends,
        can_compile=importlib.util.find_spec("triton") is not None,
    )


def use_compile_cache(directory: Path) -> None:
    """Keep compiled kernels in ``directory`` so a restarted worker reuses them (a warm
    start takes seconds instead of the minute the first compile takes). An operator's own
    TORCHINDUCTOR_CACHE_DIR wins."""
    directory.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(directory))
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")


def apply_plan(pipeline: Any, plan: TierPlan, done: set[int]) -> None:
    """Optimise ``pipeline`` in place per ``plan``.

    ``done`` holds the ids of modules already optimised: the VAE is shared between models,
    and fusing or compiling it twice would break it.
    """
    transformer = pipeline.transformer
    if id(transformer) in done:
        return
    done.add(id(transformer))
    if plan.fuse_qkv:
        # One matmul for Q, K and V instead of three: same math, fewer kernel launches.
        transformer.fuse_qkv_projections()
    if plan.attention_backend:
        transformer.set_attention_backend(plan.attention_backend)
    if plan.fp8_weights:
        quantize_fp8(transformer)
    if plan.step_cache:
        set_step_cache(transformer, True, plan.cache_threshold)
    if plan.compile:
        # Regional compilation: the 19 + 38 repeated blocks share two compiled graphs,
        # so compiling takes seconds, not the minutes a whole-model compile does.
        # reduce-overhead replays each block as a CUDA graph: one launch per block and
        # step instead of one per kernel, for shapes seen before (warm-up records them).
        mode = "reduce-overhead" if plan.cuda_graphs else None
        transformer.compile_repeated_blocks(fullgraph=True, mode=mode)
    vae = pipeline.vae
    if id(vae) not in done:
        done.add(id(vae))
        if plan.compile:
            vae.to(memory_format=torch.channels_last)
            vae.decoder = torch.compile(vae.decoder, fullgraph=True)


def quantize_fp8(transformer: Any) -> None:
    """FP8 weights and dynamically scaled FP8 activations in every linear layer, one
    scale per row (torchao): the FP8 tensor cores do the matmuls."""
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        PerRow,
        quantize_,
    )

    quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))


def set_step_cache(
    transformer: Any, enabled: bool, threshold: float = STEP_CACHE_THRESHOLD
) -> None:
    """Turn the First-Block step cache on or off (a hook; the weights are untouched)."""
    if enabled == transformer.is_cache_enabled:
        return
    if enabled:
        from diffusers import FirstBlockCacheConfig

        transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
    else:
        transformer.disable_cache()
