"""The registry's FLUX.1 models at their real, full-size architecture, with random weights.

For benchmarks on a machine without the weights (or without the Hub): every module is the
real diffusers / transformers class with the exact configuration of the FLUX.1 checkpoints,
so layers, widths, sequence lengths and therefore the work per step match the real model;
only the numbers in the weights are random, and the images are noise.

Modules are built on the meta device (no memory) and materialised directly on the target
device in the target dtype, then filled with a cheap seeded random init: no full-precision
copy on the host, no download. The same ``seed`` on the same device gives the same weights,
so two builds (a benchmark's baseline and its engine) hold identical weights.

Tokenizers are the tiny models' offline byte-level ones (``tiny.py``): every id they produce
lies inside the real vocabularies, and the pipelines pad the prompts to the real lengths
(CLIP 77, T5 ``max_sequence_length``), so the encoders do the real model's work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxFillPipeline,
    FluxKontextPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
)
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from fluxserve.runtime.random_weights import COMPONENT_SEEDS, materialise
from fluxserve.runtime.tiny import build_clip_tokenizer, build_t5_tokenizer

# FLUX.1's transformer (black-forest-labs/FLUX.1-*/transformer/config.json): 19 double-stream
# and 38 single-stream blocks of width 24 x 128 = 3072 (the "12B" model).
TRANSFORMER = {
    "patch_size": 1,
    "in_channels": 64,  # 16 latent channels packed 2x2
    "out_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,  # T5-XXL's width
    "pooled_projection_dim": 768,  # CLIP-L's projection
    "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],  # sums to attention_head_dim
}

# google/t5-v1_1-xxl's encoder (FLUX.1's text_encoder_2).
T5_XXL = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}

# openai/clip-vit-large-patch14's text tower (FLUX.1's text_encoder). The token ids are the
# offline tokenizer's (bos 0, eos 1, pad 1), so the pooled output is read at its eos.
CLIP_L = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "pad_token_id": 1,
}

# FLUX.1's autoencoder (ae.safetensors as vae/config.json): 8x, 16 latent channels.
VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "force_upcast": True,
    "mid_block_add_attention": True,
}

# FLUX.1 [dev]'s schedule: the shift grows with the image's token count.
SCHEDULER_DEV = {
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
# FLUX.1 [schnell]'s: timestep-distilled, no shift.
SCHEDULER_SCHNELL = {**SCHEDULER_DEV, "shift": 1.0, "use_dynamic_shifting": False}


@dataclass(frozen=True)
class FullsizeConfig:
    """Everything that differs between the registry's models, plus the shared configs."""

    pipeline_class: type
    transformer: dict[str, Any]
    scheduler: dict[str, Any]
    text_encoder: dict[str, Any] = field(default_factory=lambda: dict(CLIP_L))
    text_encoder_2: dict[str, Any] = field(default_factory=lambda: dict(T5_XXL))
    vae: dict[str, Any] = field(default_factory=lambda: dict(VAE))


def fullsize_config(name: str) -> FullsizeConfig:
    """The configs of registry model ``name``; ValueError for a model without one."""
    if name == "flux-schnell":
        return FullsizeConfig(
            FluxPipeline, {**TRANSFORMER, "guidance_embeds": False}, dict(SCHEDULER_SCHNELL)
        )
    if name == "flux-dev":
        return FullsizeConfig(FluxPipeline, dict(TRANSFORMER), dict(SCHEDULER_DEV))
    if name == "flux-kontext-dev":  # the references join the token sequence, not channels
        return FullsizeConfig(FluxKontextPipeline, dict(TRANSFORMER), dict(SCHEDULER_DEV))
    if name == "flux-fill-dev":
        # The noisy latents (64), the masked image's latents (64) and the 8x8 mask packed
        # 2x2 (256): 384 input channels; the output is the 64 of the latents.
        return FullsizeConfig(
            FluxFillPipeline, {**TRANSFORMER, "in_channels": 384}, dict(SCHEDULER_DEV)
        )
    raise ValueError(
        f"no full-size architecture for {name!r}: use flux-schnell, flux-dev, "
        "flux-kontext-dev or flux-fill-dev"
    )


FLUX1_FULLSIZE = ("flux-schnell", "flux-dev", "flux-kontext-dev", "flux-fill-dev")
# FLUX.2's live in fullsize_flux2.py (which builds on this module's materialise).
FLUX2_FULLSIZE = (
    "flux2-klein-4b", "flux2-klein-base-4b", "flux2-klein-9b", "flux2-klein-base-9b", "flux2-dev"
)  # fmt: skip
FULLSIZE_MODELS = (*FLUX1_FULLSIZE, *FLUX2_FULLSIZE)


def modules_on_meta(config: FullsizeConfig) -> dict[str, nn.Module]:
    """The four weighted modules with their parameters on the meta device (no memory).

    Buffers (CLIP's position ids) stay real: they are small and not random."""
    with init_empty_weights(include_buffers=False):
        modules = {
            "transformer": FluxTransformer2DModel(**config.transformer),
            "vae": AutoencoderKL(**config.vae),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**config.text_encoder)),
            "text_encoder_2": T5EncoderModel(T5Config(**config.text_encoder_2)),
        }
    # init_empty_weights re-registers every parameter, which unties T5's input embedding
    # from its shared one; from_pretrained ties them, so tie them again.
    for module in modules.values():
        if hasattr(module, "tie_weights"):
            module.tie_weights()
    return modules


def parameter_counts(name: str) -> dict[str, int]:
    """Parameters per component of model ``name`` at full size, counted on the meta device
    (nothing allocated). Tied weights count once."""
    if name in FLUX2_FULLSIZE:
        from fluxserve.runtime.fullsize_flux2 import flux2_modules_on_meta

        modules = flux2_modules_on_meta(name)
    else:
        modules = modules_on_meta(fullsize_config(name))
    return {part: sum(p.numel() for p in module.parameters()) for part, module in modules.items()}


def build_random_pipeline(
    config: FullsizeConfig, device: torch.device | str, dtype: torch.dtype, seed: int = 0
) -> Any:
    """A pipeline of ``config`` with seeded random weights, built straight on ``device``."""
    modules = modules_on_meta(config)
    for part, module in modules.items():
        materialise(module, device, dtype, seed * 16 + COMPONENT_SEEDS[part])
    pipeline = config.pipeline_class(
        scheduler=FlowMatchEulerDiscreteScheduler(**config.scheduler),
        tokenizer=build_clip_tokenizer(),
        tokenizer_2=build_t5_tokenizer(),
        **modules,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def build_fullsize_pipeline(
    name: str, device: torch.device | str, dtype: torch.dtype, seed: int = 0
) -> Any:
    """Registry model ``name`` (FULLSIZE_MODELS) at its full-size architecture with random
    weights. Needs the real model's memory on ``device`` (FLUX.1: about 34 GB in bf16;
    FLUX.2 [dev]: about 112 GB, [klein] 4B about 16 GB)."""
    if name in FLUX2_FULLSIZE:
        from fluxserve.runtime.fullsize_flux2 import build_flux2_pipeline

        return build_flux2_pipeline(name, device, dtype, seed)
    return build_random_pipeline(fullsize_config(name), device, dtype, seed)
