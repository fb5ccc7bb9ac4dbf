"""The registry's FLUX.2 models at their full-size architecture, with random weights.

As fullsize.py does for FLUX.1: the real diffusers / transformers classes with the
checkpoints' configurations, built on the meta device and materialised on the target
device with seeded random weights, so a benchmark does the real model's work per step
without the weights or the Hub.

The configurations come from diffusers' own defaults (Flux2Transformer2DModel's and
AutoencoderKLFlux2's are FLUX.2 [dev]'s) and from the published configs of the text
encoders (Mistral-Small-3.2-24B, Qwen3-4B, Qwen3-8B). The [klein] transformers' depths and
widths could not be checked against their config.json from here (the Hub is unreachable):
docs/flux2.md lists them as unconfirmed, and the parameter counts printed by the bench
show whether they add up to 4B and 9B.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import (
    AutoencoderKLFlux2,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
)
from torch import nn
from transformers import (
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    MistralConfig,
    PixtralVisionConfig,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from fluxserve.runtime.random_weights import COMPONENT_SEEDS, materialise
from fluxserve.runtime.tiny_flux2 import build_tokenizer

# FLUX.2 [dev]: 8 double-stream and 48 single-stream blocks of width 48 x 128 = 6144; the
# text input is three of Mistral-Small's hidden states stacked (3 x 5120).
DEV_TRANSFORMER: dict[str, Any] = {}  # diffusers' defaults are [dev]'s
# [klein] 4B and 9B (unconfirmed, see the module docstring): no guidance embedding, text
# from three stacked Qwen3 hidden states (3 x 2560, 3 x 4096).
KLEIN_4B_TRANSFORMER = {
    "num_layers": 5, "num_single_layers": 20, "num_attention_heads": 24,
    "joint_attention_dim": 7680, "guidance_embeds": False,
}  # fmt: skip
KLEIN_9B_TRANSFORMER = {
    "num_layers": 8, "num_single_layers": 24, "num_attention_heads": 32,
    "joint_attention_dim": 12288, "guidance_embeds": False,
}  # fmt: skip

QWEN3 = {
    "vocab_size": 151936, "num_hidden_layers": 36, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960,
    "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
}  # fmt: skip
QWEN3_4B = {**QWEN3, "hidden_size": 2560, "intermediate_size": 9728, "tie_word_embeddings": True}
QWEN3_8B = {**QWEN3, "hidden_size": 4096, "intermediate_size": 12288}
# Mistral-Small-3.2-24B-Instruct-2506: the language model and its Pixtral vision tower.
MISTRAL_SMALL_TEXT = {
    "vocab_size": 131072, "hidden_size": 5120, "intermediate_size": 32768,
    "num_hidden_layers": 40, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "max_position_embeddings": 131072, "rope_theta": 1000000000.0,
    "rms_norm_eps": 1e-5,
}  # fmt: skip
PIXTRAL = {
    "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
    "num_attention_heads": 16, "head_dim": 64, "image_size": 1540, "patch_size": 14,
}  # fmt: skip
SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True}


@dataclass(frozen=True)
class Flux2FullsizeConfig:
    pipeline_class: type
    transformer: dict[str, Any]
    text_encoder: dict[str, Any]  # Qwen3's config, or Mistral3's text and vision parts
    vae: dict[str, Any] = field(default_factory=dict)  # diffusers' defaults are FLUX.2's

    def text_encoder_module(self) -> nn.Module:
        if self.pipeline_class is Flux2Pipeline:
            return Mistral3ForConditionalGeneration(
                Mistral3Config(
                    text_config=MistralConfig(**self.text_encoder["text"]),
                    vision_config=PixtralVisionConfig(**self.text_encoder["vision"]),
                )
            )
        return Qwen3ForCausalLM(Qwen3Config(**self.text_encoder))


FLUX2_CONFIGS: dict[str, Flux2FullsizeConfig] = {
    "flux2-dev": Flux2FullsizeConfig(
        Flux2Pipeline, DEV_TRANSFORMER, {"text": MISTRAL_SMALL_TEXT, "vision": PIXTRAL}
    ),
    "flux2-klein-4b": Flux2FullsizeConfig(Flux2KleinPipeline, KLEIN_4B_TRANSFORMER, QWEN3_4B),
    "flux2-klein-base-4b": Flux2FullsizeConfig(Flux2KleinPipeline, KLEIN_4B_TRANSFORMER, QWEN3_4B),
    "flux2-klein-9b": Flux2FullsizeConfig(Flux2KleinPipeline, KLEIN_9B_TRANSFORMER, QWEN3_8B),
    "flux2-klein-base-9b": Flux2FullsizeConfig(Flux2KleinPipeline, KLEIN_9B_TRANSFORMER, QWEN3_8B),
}


def flux2_modules_on_meta(name: str) -> dict[str, nn.Module]:
    config = FLUX2_CONFIGS[name]
    with init_empty_weights(include_buffers=False):
        modules = {
            "transformer": Flux2Transformer2DModel(**config.transformer),
            "vae": AutoencoderKLFlux2(**config.vae),
            "text_encoder": config.text_encoder_module(),
        }
    for module in modules.values():
        if hasattr(module, "tie_weights"):
            module.tie_weights()
    return modules


def build_flux2_pipeline(name: str, device: torch.device | str, dtype: torch.dtype,
                         seed: int = 0) -> Any:  # fmt: skip
    """FLUX.2 registry model ``name`` at full size with seeded random weights."""
    config = FLUX2_CONFIGS[name]
    modules = flux2_modules_on_meta(name)
    for part, module in modules.items():
        materialise(module, device, dtype, seed * 16 + COMPONENT_SEEDS[part])
    extra = {}
    if config.pipeline_class is Flux2KleinPipeline:
        extra["is_distilled"] = "base" not in name
    pipeline = config.pipeline_class(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
        tokenizer=build_tokenizer(),
        **modules,
        **extra,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline
