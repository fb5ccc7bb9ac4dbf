"""Prompt embeddings for the pipelines of both families, in a form the cache can hold.

FLUX.1 pipelines take ``prompt_embeds`` (T5) and ``pooled_prompt_embeds`` (CLIP); FLUX.2
pipelines take ``prompt_embeds`` alone (stacked hidden states of one language model), and
[klein]'s undistilled (base) models also ``negative_prompt_embeds`` for classifier-free
guidance, which is the empty prompt's. Every tensor here has the batch on its first axis,
so one request's images repeat it and a batch of requests concatenates it.
"""

from __future__ import annotations

from typing import Any

import torch

from fluxserve.runtime.prompt_cache import Embeddings
from fluxserve.specs import ModelSpec


def uses_negative_prompt(pipeline: Any) -> bool:
    """[klein] base models guide with the empty prompt's embeddings (CFG)."""
    return getattr(pipeline.config, "is_distilled", True) is False


def layer_arguments(spec: ModelSpec) -> dict[str, Any]:
    """FLUX.2's ``text_encoder_out_layers`` where the spec names them (the tiny models)."""
    if spec.is_flux2 and spec.text_encoder_layers is not None:
        return {"text_encoder_out_layers": spec.text_encoder_layers}
    return {}


def encode(pipeline: Any, spec: ModelSpec, prompt: str) -> Embeddings:
    """``prompt``'s embeddings for one image, as ``pipeline`` would compute them."""
    device = pipeline._execution_device
    with torch.inference_mode():
        if spec.is_flux2:
            embeds, _text_ids = pipeline.encode_prompt(
                prompt=prompt, device=device, num_images_per_prompt=1,
                max_sequence_length=spec.max_sequence_length, **layer_arguments(spec),
            )  # fmt: skip
            return {"prompt_embeds": embeds}
        embeds, pooled, _ = pipeline.encode_prompt(
            prompt=prompt,
            prompt_2=None,
            device=device,
            num_images_per_prompt=1,
            max_sequence_length=spec.max_sequence_length,
        )
    return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}


def repeat(embeddings: Embeddings, times: int) -> Embeddings:
    """One request's ``times`` images: the same embeddings on each."""
    return {
        name: tensor.repeat(times, *([1] * (tensor.dim() - 1)))
        for name, tensor in embeddings.items()
    }


def concatenate(batch: list[Embeddings]) -> Embeddings:
    """A batch of requests: each request's embeddings in order."""
    return {name: torch.cat([item[name] for item in batch]) for name in batch[0]}


def negative_name(embeddings: Embeddings) -> Embeddings:
    """The empty prompt's embeddings under the name CFG reads them by."""
    return {"negative_prompt_embeds": embeddings["prompt_embeds"]}
