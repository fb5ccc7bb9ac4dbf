"""Low-memory presets (``--memory-preset``): how FLUX.1 is quantized and placed to fit a GPU.

FLUX.1 in bf16 is a 12B transformer (22.2 GiB), T5-XXL (8.9 GiB), CLIP-L (0.23 GiB) and a
VAE (0.16 GiB): 31.4 GiB of weights, which fits a 40 GB card and nothing smaller. Each
preset names the card it is for and says how the weights shrink and where they live:

- ``80gb`` (and ``none``): everything on the GPU in the model dtype.
- ``24gb``: the transformer's weights in FP8 (torchao, weight-only); the text encoders stay
  in CPU memory and stream onto the GPU layer by layer while a prompt is encoded.
- ``16gb``: as 24gb, with the VAE decoding in tiles (and one image at a time).
- ``12gb``: as 16gb with the transformer in NF4 (bitsandbytes 4-bit).

The arithmetic behind each is in ``PRESET_PLANS``; ``auto`` picks the largest preset whose
estimate fits the GPU. The decisions are pure (no torch) so they are tested on any machine;
``quantization_config`` and ``place_pipeline`` apply them and import torch, diffusers and
the quantization packages only when called.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Literal

GIB = 1024**3

TransformerWeights = Literal["model-dtype", "fp8", "nf4"]


class MemoryPreset(StrEnum):
    AUTO = "auto"
    NONE = "none"
    GB80 = "80gb"
    GB24 = "24gb"
    GB16 = "16gb"
    GB12 = "12gb"


@dataclass(frozen=True)
class MemoryPlan:
    """What a preset does on this machine, after every fallback."""

    preset: str  # the concrete preset (never "auto")
    transformer_weights: TransformerWeights
    text_encoders: Literal["device", "offload"]  # offload = on CPU, moved in to encode
    # none: every module stays on the device. model: diffusers' enable_model_cpu_offload,
    # each whole module moves in when it runs (the transformer too). group: the text
    # encoders are group-offloaded layer by layer; the transformer and VAE stay resident.
    offload: Literal["none", "model", "group"]
    vae_tiling: bool  # tiled and sliced VAE decoding

    def __post_init__(self) -> None:
        # An offloaded text encoder needs a mechanism that brings it in, and no mechanism
        # here leaves the text encoders on the device.
        if (self.text_encoders == "offload") != (self.offload != "none"):
            raise ValueError(
                f"text_encoders={self.text_encoders!r} does not go with offload={self.offload!r}"
            )

    def describe(self) -> str:
        weights = {
            "model-dtype": "in the model dtype",
            "fp8": "in FP8 (torchao)",
            "nf4": "in NF4 (bitsandbytes)",
        }[self.transformer_weights]
        where = {
            "none": "everything on the GPU",
            "model": "each module moved to the GPU only while it runs (model offload)",
            "group": "text encoders in CPU memory, streamed in layer by layer to encode",
        }[self.offload]
        vae = "tiled VAE decoding" if self.vae_tiling else "whole-image VAE decoding"
        return f"memory preset {self.preset}: transformer weights {weights}; {where}; {vae}"


# Sizes in GiB, from FLUX.1 [dev]'s parameter counts. The transformer has 11.9B parameters:
# 2 bytes each in bf16; 1 byte in FP8 (plus one bf16 scale per row); NF4 is 4 bits plus an
# fp32 absmax per block of 64 (0.5625 bytes) on the linear layers, the rest staying bf16.
TRANSFORMER_GIB: dict[str, float] = {"model-dtype": 22.2, "fp8": 11.1, "nf4": 6.2}
T5_GIB = 8.9  # T5-XXL encoder, 4.76B parameters in bf16
TEXT_ENCODERS_GIB = T5_GIB + 0.23  # and CLIP-L, 123M parameters
VAE_GIB = 0.16  # 84M parameters
# Working memory at 1024x1024, from diffusers' FLUX.1 [dev] quantization benchmark: the bf16
# pipeline peaks 4.7 GiB above its loaded weights (36.2 vs 31.4 GiB), nearly all of it the
# whole-image VAE decode; the denoising loop alone peaks 1.1 GiB above the transformer (23.3
# GiB with model offload). A tiled decode works on 512x512 tiles, a quarter of that 4.7 GiB.
UNTILED_WORK_GIB = 4.7
TILED_WORK_GIB = 1.5
DENOISE_WORK_GIB = 1.1
# The CUDA context and the allocator's slack: on the card, outside what torch counts.
CONTEXT_GIB = 0.5

# FP8 weight-only (torchao's Float8WeightOnlyConfig) stores weights in float8 and
# dequantizes them to bf16 before each matmul (torchao 0.18, float8_tensor.py), so it needs
# no FP8 tensor cores, only bf16 ones: Ampere (8.0) and newer. FP8 *activations* (the fp8
# tier in tiers.py) are what need Ada/Hopper (8.9).
FP8_WEIGHTS_MIN_CAPABILITY = (8, 0)

PRESET_PLANS: dict[MemoryPreset, MemoryPlan] = {
    # 22.2 + 9.1 + 0.16 = 31.4 GiB of weights, + 4.7 working + 0.5 context: 36.7 GiB. A 40 GB
    # A100 (39.4 GiB) takes it; a 32 GB card does not.
    MemoryPreset.GB80: MemoryPlan("80gb", "model-dtype", "device", "none", vae_tiling=False),
    # FP8 halves the transformer to 11.1 GiB. T5 beside it (20.2 GiB of weights + 4.7) would
    # leave a 24 GB card (23.6 GiB) nothing, so the text encoders stream in from CPU memory
    # (group offload: ~0.1 GiB on the GPU at a time; 9.1 GiB over PCIe 4 at ~25 GB/s is
    # ~0.4 s per prompt not in the prompt cache) while the transformer stays resident. Model
    # offload would also copy the 11.1 GiB transformer in and out on every request (~2 s).
    # 11.1 + 0.16 + 4.7 + 0.5 = 16.5 GiB: room on 24 GB for larger images and batches.
    MemoryPreset.GB24: MemoryPlan("24gb", "fp8", "offload", "group", vae_tiling=False),
    # A tiled decode takes the working memory from 4.7 to ~1.5 GiB: 11.1 + 0.16 + 1.5 + 0.5 =
    # 13.3 GiB of a 16 GB card's 15.6, so FP8 (close to bf16 in quality) still fits.
    MemoryPreset.GB16: MemoryPlan("16gb", "fp8", "offload", "group", vae_tiling=True),
    # FP8 (13.3 GiB) does not fit 12 GB (11.7 GiB); NF4 does: 6.2 + 0.16 + 1.5 + 0.5 = 8.4
    # GiB. NF4 stays resident: diffusers' group offload moves a parameter's data but not
    # bitsandbytes' quant_state, so a 4-bit transformer is not group-offloaded.
    MemoryPreset.GB12: MemoryPlan("12gb", "nf4", "offload", "group", vae_tiling=True),
}
NONE_PLAN = MemoryPlan("none", "model-dtype", "device", "none", vae_tiling=False)
# auto tries these in order and takes the first that fits.
LARGEST_FIRST = (MemoryPreset.GB80, MemoryPreset.GB24, MemoryPreset.GB16, MemoryPreset.GB12)

# The package each quantized format needs, and the pip line that installs it.
BACKENDS: dict[str, str] = {"fp8": "torchao", "nf4": "bitsandbytes"}
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


def package_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def estimated_need_bytes(plan: MemoryPlan) -> int:
    """GPU memory the plan peaks at for a 1024x1024 image (see the sizes above)."""
    transformer = TRANSFORMER_GIB[plan.transformer_weights]
    work = TILED_WORK_GIB if plan.vae_tiling else UNTILED_WORK_GIB
    if plan.offload == "model":
        # One module on the GPU at a time: the largest of the three phases.
        peak = max(transformer + DENOISE_WORK_GIB, T5_GIB, VAE_GIB + work)
    else:
        encoders = TEXT_ENCODERS_GIB if plan.text_encoders == "device" else 0.0
        peak = transformer + encoders + VAE_GIB + work
    return round((peak + CONTEXT_GIB) * GIB)


def choose_preset(total_gpu_bytes: int | None) -> MemoryPreset:
    """The largest preset whose estimate fits ``total_gpu_bytes``; NONE without a GPU.

    A GPU too small even for 12gb still gets 12gb, the least it can do; resolve_memory_plan
    says in a note that it may run out of memory.
    """
    if total_gpu_bytes is None:
        return MemoryPreset.NONE
    for preset in LARGEST_FIRST:
        if estimated_need_bytes(PRESET_PLANS[preset]) <= total_gpu_bytes:
            return preset
    return MemoryPreset.GB12


def parse_preset(name: str) -> MemoryPreset:
    try:
        return MemoryPreset(name.strip().lower())
    except ValueError:
        allowed = ", ".join(preset.value for preset in MemoryPreset)
        raise ValueError(f"unknown memory preset {name!r}; choose one of: {allowed}") from None


def resolve_memory_plan(
    preset: str,
    device_type: str,
    total_gpu_bytes: int | None,
    have_package: Callable[[str], bool] = package_available,
    capability: tuple[int, int] | None = None,
) -> tuple[MemoryPlan, list[str]]:
    """The plan ``preset`` comes to on this machine, and a log line for each fallback.

    ``total_gpu_bytes`` and ``capability`` describe the CUDA device (None when unknown);
    ``have_package`` says whether a quantization package is importable.
    """
    wanted = parse_preset(preset)
    if device_type != "cuda":
        return NONE_PLAN, _not_cuda_notes(wanted, device_type)
    notes: list[str] = []
    if wanted is MemoryPreset.AUTO:
        wanted = choose_preset(total_gpu_bytes)
        notes.append(f"memory preset auto chose {wanted} for {_gib(total_gpu_bytes)} of GPU memory")
    plan = NONE_PLAN if wanted is MemoryPreset.NONE else PRESET_PLANS[wanted]
    plan, weight_notes = _available_weights(plan, have_package, capability)
    notes += weight_notes
    notes += _fit_notes(plan, total_gpu_bytes, fell_back=bool(weight_notes))
    return plan, notes


def _not_cuda_notes(wanted: MemoryPreset, device_type: str) -> list[str]:
    if wanted is MemoryPreset.NONE:
        return []
    return [
        f"memory preset {wanted} resolves to none on {device_type}: offloading and fp8/nf4 "
        f"weights need a CUDA GPU, so everything stays on the {device_type} in the model dtype"
    ]


def _weights_unavailable(
    weights: str, have_package: Callable[[str], bool], capability: tuple[int, int] | None
) -> str | None:
    """Why ``weights`` cannot be used here, or None when they can."""
    package = BACKENDS.get(weights)
    if package is None:
        return None
    if not have_package(package):
        return f"{weights} weights need {package} (pip install {package})"
    if weights == "fp8" and capability is not None and capability < FP8_WEIGHTS_MIN_CAPABILITY:
        need = ".".join(map(str, FP8_WEIGHTS_MIN_CAPABILITY))
        have = ".".join(map(str, capability))
        return f"fp8 weights need compute capability {need} or newer (this GPU is {have})"
    return None


def _available_weights(
    plan: MemoryPlan, have_package: Callable[[str], bool], capability: tuple[int, int] | None
) -> tuple[MemoryPlan, list[str]]:
    """The plan with weights this machine can load: the other quantized format, else bf16."""
    reason = _weights_unavailable(plan.transformer_weights, have_package, capability)
    if reason is None:
        return plan, []
    other = "nf4" if plan.transformer_weights == "fp8" else "fp8"
    other_reason = _weights_unavailable(other, have_package, capability)
    if other_reason is None:
        note = f"memory preset {plan.preset}: {reason}; using {other} weights instead"
        return replace(plan, transformer_weights=other), [note]
    # Unquantized, the transformer (22.2 GiB) never shares the GPU with the VAE decode or T5
    # under model offload: the lowest peak diffusers has without quantization (23.8 GiB).
    fallback = replace(plan, transformer_weights="model-dtype", text_encoders="offload",
                       offload="model")  # fmt: skip
    note = (
        f"memory preset {plan.preset}: {reason}, and {other_reason}; the transformer stays "
        "in the model dtype, with model offload"
    )
    return fallback, [note]


def _fit_notes(plan: MemoryPlan, total_gpu_bytes: int | None, fell_back: bool) -> list[str]:
    need = estimated_need_bytes(plan)
    if total_gpu_bytes is None or need <= total_gpu_bytes:
        return []
    note = (
        f"memory preset {plan.preset} needs about {_gib(need)} at 1024x1024 and this GPU has "
        f"{_gib(total_gpu_bytes)}: expect out-of-memory errors"
    )
    fits = choose_preset(total_gpu_bytes)
    if fell_back:
        note += " unless the quantization package named above is installed"
    elif fits != plan.preset:
        note += f"; --memory-preset {fits} fits it"
    return [note]


def _gib(size: int | None) -> str:
    return "an unknown amount" if size is None else f"{size / GIB:.1f} GiB"


def uses_offload(plan: MemoryPlan) -> bool:
    """True when modules move between CPU and GPU: the runner must then neither call
    ``.to(device)`` on the pipeline nor share its modules with another pipeline."""
    return plan.offload != "none"


def probe_gpu(device: Any) -> tuple[int | None, tuple[int, int] | None]:
    """(total memory in bytes, compute capability) of a CUDA ``device``; (None, None) else."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return None, None
    properties = torch.cuda.get_device_properties(device)
    return properties.total_memory, (properties.major, properties.minor)


def quantization_config(
    plan: MemoryPlan, dtype: Any, have_package: Callable[[str], bool] = package_available
) -> Any | None:
    """A diffusers PipelineQuantizationConfig that quantizes only the transformer, for
    ``from_pretrained(quantization_config=...)``; None for model-dtype weights.

    Raises ImportError naming the package to install when the backend is missing:
    diffusers itself would fail later, at load time, with a less direct message.
    """
    weights = plan.transformer_weights
    if weights == "model-dtype":
        return None
    package = BACKENDS[weights]
    if not have_package(package):
        raise ImportError(f"{weights} transformer weights need {package}: pip install {package}")
    from diffusers import PipelineQuantizationConfig

    if weights == "nf4":
        # diffusers and transformers share BitsAndBytesConfig's signature, so the backend
        # name is enough; the config is built when the transformer loads.
        return PipelineQuantizationConfig(
            quant_backend="bitsandbytes_4bit",
            quant_kwargs={
                "load_in_4bit": True,
                "bnb_4bit_quant_type": "nf4",
                "bnb_4bit_compute_dtype": dtype,
            },
            components_to_quantize=["transformer"],
        )
    # diffusers' TorchAoConfig takes a torchao config object and its signature differs from
    # transformers' (which PipelineQuantizationConfig refuses with quant_backend), so the
    # transformer gets its config through quant_mapping.
    try:
        from diffusers import TorchAoConfig
        from torchao.quantization import Float8WeightOnlyConfig
    except ImportError as exc:
        raise ImportError(
            f"fp8 transformer weights need torchao: pip install torchao ({exc})"
        ) from exc
    return PipelineQuantizationConfig(
        quant_mapping={"transformer": TorchAoConfig(Float8WeightOnlyConfig())}
    )


def place_pipeline(pipeline: Any, plan: MemoryPlan, device: Any) -> None:
    """Put a loaded pipeline on ``device`` as the plan says (works on CPU for any plan)."""
    import torch

    device = torch.device(device)
    if plan.offload == "none":
        pipeline.to(device)
    elif plan.offload == "model":
        pipeline.enable_model_cpu_offload(device=device)
    else:
        _group_offload_text_encoders(pipeline, device)
    if plan.vae_tiling:
        # Tiles bound a large image's decode; slices decode a batch one image at a time.
        pipeline.vae.enable_tiling()
        pipeline.vae.enable_slicing()


def _group_offload_text_encoders(pipeline: Any, device: Any) -> None:
    import torch
    from diffusers.hooks import apply_group_offloading

    for name, module in pipeline.components.items():
        if not isinstance(module, torch.nn.Module):
            continue
        if name not in TEXT_ENCODERS:
            module.to(device)  # resident: the transformer and the VAE
            continue
        # Leaf level: transformers' encoders keep their layers below the top module, where
        # block level would find no ModuleList and move each encoder whole. On CUDA a side
        # stream prefetches the next layer while the current one runs; the CPU copies are
        # pinned for it up front (9.1 GiB of page-locked host memory for FLUX.1).
        apply_group_offloading(
            module,
            onload_device=device,
            offload_device=torch.device("cpu"),
            offload_type="leaf_level",
            use_stream=device.type == "cuda",
        )
