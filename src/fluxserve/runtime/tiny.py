"""The tiny models: FLUX.1's structures at tiny sizes, random weights, built offline
(FLUX.2's are in tiny_flux2.py; ``make_tiny`` writes either).

``tiny`` is FLUX.1 [dev] (FluxPipeline), ``tiny-kontext`` FLUX.1 Kontext
(FluxKontextPipeline) and ``tiny-fill`` FLUX.1 Fill (FluxFillPipeline, whose transformer
also reads the masked image and the mask). Every class is the real diffusers /
transformers one, and the directory written is an ordinary diffusers-format checkpoint,
so it loads through the same code as FLUX.1 weights. Their images are noise.

As with the real FLUX.1 family, the three share byte-identical text encoders, tokenizers
and VAE (each component is built from its own seed), so a server that loads several
shares those components between them.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

import diffusers
import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxFillPipeline,
    FluxKontextPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from fluxserve.runtime.tiny_parts import SCHEDULER, SEED, bytes_to_unicode
from fluxserve.specs import TINY_MARKER

logger = logging.getLogger(__name__)

MARKER = TINY_MARKER

CLIP_MAX_LENGTH = 77  # as FLUX.1's CLIP-L
T5_MAX_LENGTH = 512  # as FLUX.1's T5-XXL


def build_clip_tokenizer() -> CLIPTokenizer:
    # Every byte as a token, with and without CLIP's end-of-word suffix; no merges.
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in bytes_to_unicode().values():
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)


def build_t5_tokenizer() -> T5TokenizerFast:
    # A unigram vocabulary of single characters, with T5's pad/eos/unk at ids 0/1/2.
    letters = "abcdefghijklmnopqrstuvwxyz"
    symbols = letters + letters.upper() + "0123456789.,;:!?'\"-()"
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [("▁" + c, -1.5) for c in letters] + [(c, -2.0) for c in symbols]
    return T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=T5_MAX_LENGTH)


# variant -> (pipeline class, transformer input channels)
VARIANTS: dict[str, tuple[type, int]] = {
    "tiny": (FluxPipeline, 64),  # 16 latent channels packed 2x2, as FLUX.1
    "tiny-kontext": (FluxKontextPipeline, 64),  # references join the sequence, not channels
    # Fill: the noisy latents (64), the masked image's latents (64) and the 8x8 mask
    # packed 2x2 (256), as FLUX.1 Fill.
    "tiny-fill": (FluxFillPipeline, 384),
}


def build_tiny_pipeline(variant: str = "tiny"):
    """A tiny pipeline of ``variant`` with seeded random weights (same bytes on every build)."""
    pipeline_class, in_channels = VARIANTS[variant]
    clip_tokenizer, t5_tokenizer = build_clip_tokenizer(), build_t5_tokenizer()
    torch.manual_seed(SEED + 1 + list(VARIANTS).index(variant))  # each variant its own
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=in_channels,
        out_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],  # sums to attention_head_dim
        guidance_embeds=True,
    )
    torch.manual_seed(SEED)  # the shared components: the same bytes in every variant
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,  # 8x downsampling, as FLUX.1
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 8, 8, 8],
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
        # Latent statistics of the SD3 family (FLUX.1 uses 0.1159 and 0.3611); with random
        # weights any values work, and these keep the tiny models byte-identical to before.
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tokenizer),
            hidden_size=32,  # = pooled_projection_dim
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            projection_dim=32,
            max_position_embeddings=CLIP_MAX_LENGTH,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer),
            d_model=32,  # = joint_attention_dim
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER)
    return pipeline_class(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )


def build_variant(variant: str):
    """Any tiny model by name: FLUX.1's here, FLUX.2's in tiny_flux2."""
    from fluxserve.runtime import tiny_flux2  # only when a FLUX.2 model is built

    if variant in tiny_flux2.VARIANTS:
        return tiny_flux2.build_tiny_flux2_pipeline(variant)
    if variant not in VARIANTS:
        raise ValueError(f"no tiny model {variant!r}; choose from {', '.join(tiny_variants())}")
    return build_tiny_pipeline(variant)


def tiny_variants() -> list[str]:
    from fluxserve.runtime import tiny_flux2

    return [*VARIANTS, *tiny_flux2.VARIANTS]


def make_tiny(directory: Path, variant: str = "tiny") -> Path:
    """Write the tiny model ``variant`` to ``directory`` as a diffusers-format checkpoint.

    The directory appears whole or not at all (built beside it, then renamed), so two
    workers building it at once cannot leave half a model.
    """
    directory = Path(directory)
    if (directory / MARKER).exists():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=directory.parent))
    diffusers.utils.logging.disable_progress_bar()
    try:
        build_variant(variant).save_pretrained(staging)
        (staging / MARKER).write_text(
            json.dumps({"model": variant, "note": "random weights; images are noise"})
        )
        if directory.exists() and not any(directory.iterdir()):
            directory.rmdir()
        try:
            staging.rename(directory)
        except OSError:
            if not (directory / MARKER).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("wrote the %s test model to %s", variant, directory)
    return directory
