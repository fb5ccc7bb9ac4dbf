"""The tiny FLUX.2 models: FLUX.2's structures at tiny sizes, random weights, built offline.

``tiny-flux2`` is FLUX.2 [klein] (Flux2KleinPipeline: a Qwen3 text encoder, no guidance
embedding, distilled so guidance is not used) and ``tiny-flux2-dev`` FLUX.2 [dev]
(Flux2Pipeline: a Mistral3 text encoder, a guidance embedding). Every class is the real
diffusers / transformers one; only the sizes are tiny (after diffusers' own FLUX.2 tests,
with an 8x VAE so a 256x256 image is a few hundred tokens, as at full size).

The Hub cannot be reached from where tests run, so the tokenizer is built in code: a
byte-level BPE without merges (every byte one token), with a chat template that the
pipelines' prompt encoders can apply.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKLFlux2,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    MistralConfig,
    PixtralVisionConfig,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from fluxserve.runtime.tiny_parts import SCHEDULER, SEED, bytes_to_unicode

HIDDEN = 16  # the text encoders' width; joint_attention_dim = HIDDEN x len(OUT_LAYERS)
OUT_LAYERS = (1, 2)  # which hidden states the pipelines stack (real models: 3 of ~36)
MAX_LENGTH = 512
LATENT_CHANNELS = 4  # real FLUX.2: 32; packed 2x2 into the transformer's input
# A chat template that joins the messages' texts: enough for both pipelines' encoders
# (klein passes string contents, [dev] lists of {"type": "text"} parts).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{{ part['text'] }}{% endfor %}{% endif %}"
    "\n{% endfor %}"
)
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for char in bytes_to_unicode().values():
        vocab.setdefault(char, len(vocab))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=MAX_LENGTH,
        chat_template=CHAT_TEMPLATE,
    )


def _language_model(vocab_size: int) -> dict:
    """The decoder settings both text encoders share (Qwen3's and Mistral's)."""
    return {
        "vocab_size": vocab_size, "hidden_size": HIDDEN, "intermediate_size": 32,
        "num_hidden_layers": max(OUT_LAYERS), "num_attention_heads": 2,
        "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": MAX_LENGTH,
        "pad_token_id": 0,
    }  # fmt: skip


def _qwen3(vocab_size: int) -> Qwen3ForCausalLM:
    return Qwen3ForCausalLM(Qwen3Config(**_language_model(vocab_size)))


def _mistral3(vocab_size: int) -> Mistral3ForConditionalGeneration:
    text = MistralConfig(**_language_model(vocab_size))
    vision = PixtralVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        head_dim=8, image_size=32, patch_size=8,
    )  # fmt: skip
    return Mistral3ForConditionalGeneration(
        Mistral3Config(text_config=text, vision_config=vision, vision_feature_layer=-1)
    )


# variant -> (pipeline class, guidance embedding)
VARIANTS: dict[str, tuple[type, bool]] = {
    "tiny-flux2": (Flux2KleinPipeline, False),
    "tiny-flux2-dev": (Flux2Pipeline, True),
}


def build_tiny_flux2_pipeline(variant: str = "tiny-flux2"):
    """A tiny FLUX.2 pipeline of ``variant`` with seeded random weights."""
    pipeline_class, guidance_embeds = VARIANTS[variant]
    tokenizer = build_tokenizer()
    torch.manual_seed(SEED + 11 + list(VARIANTS).index(variant))
    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=LATENT_CHANNELS * 4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=HIDDEN * len(OUT_LAYERS),
        timestep_guidance_channels=256,
        axes_dims_rope=(4, 4, 4, 4),  # sums to attention_head_dim
        guidance_embeds=guidance_embeds,
    )
    text_encoder = _qwen3(len(tokenizer)) if not guidance_embeds else _mistral3(len(tokenizer))
    torch.manual_seed(SEED)
    vae = AutoencoderKLFlux2(
        block_out_channels=(8, 8, 8, 8),  # 8x downsampling, as FLUX.2
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=4,
        sample_size=64,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER)
    components = {
        "scheduler": scheduler, "vae": vae, "text_encoder": text_encoder,
        "tokenizer": tokenizer, "transformer": transformer,
    }  # fmt: skip
    if pipeline_class is Flux2KleinPipeline:
        return pipeline_class(**components, is_distilled=True)
    return pipeline_class(**components)
