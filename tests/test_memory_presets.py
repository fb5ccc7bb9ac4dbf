"""Low-memory presets (``--memory-preset``): what each preset resolves to on a simulated GPU,
what falls back when a quantization package or the GPU is missing, and that a placed tiny
pipeline still generates the same image whatever moves its modules.

GPU sizes are what torch reports (``total_memory``), a little under the nominal size.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import numpy as np
import pytest
import torch
from diffusers import PipelineQuantizationConfig
from diffusers.hooks.group_offloading import _is_group_offload_enabled

from fluxserve.runtime.memory import (
    GIB,
    NONE_PLAN,
    PRESET_PLANS,
    MemoryPlan,
    MemoryPreset,
    choose_preset,
    place_pipeline,
    quantization_config,
    resolve_memory_plan,
    uses_offload,
)
from fluxserve.runtime.tiny import build_tiny_pipeline

H200 = 141 * 10**9
A100_80 = int(79.2 * GIB)
A100_40 = int(39.4 * GIB)
RTX_4090 = int(23.6 * GIB)
RTX_4080 = int(15.6 * GIB)
RTX_3060 = int(11.7 * GIB)
RTX_3070 = int(7.6 * GIB)
# total memory -> the preset auto picks, for the 80/24/16/12 GB cards and neighbours
CARDS = {A100_80: "80gb", RTX_4090: "24gb", RTX_4080: "16gb", RTX_3060: "12gb"}
ADA = (8, 9)
EVERYTHING: Callable[[str], bool] = lambda _name: True  # noqa: E731


def only(*names: str) -> Callable[[str], bool]:
    return lambda name: name in names


def resolve(preset: str, total: int | None = RTX_4090, **kwargs) -> tuple[MemoryPlan, list[str]]:
    kwargs.setdefault("have_package", EVERYTHING)
    kwargs.setdefault("capability", ADA)
    return resolve_memory_plan(preset, "cuda", total, **kwargs)


# --- what each preset is --------------------------------------------------------------------


def test_the_presets_plans() -> None:
    """The plans the runner relies on (weights, text encoders, mechanism, VAE tiling)."""
    table = {
        preset: (p.transformer_weights, p.text_encoders, p.offload, p.vae_tiling)
        for preset, p in PRESET_PLANS.items()
    }
    assert table == {
        MemoryPreset.GB80: ("model-dtype", "device", "none", False),
        MemoryPreset.GB24: ("fp8", "offload", "group", False),
        MemoryPreset.GB16: ("fp8", "offload", "group", True),
        MemoryPreset.GB12: ("nf4", "offload", "group", True),
    }
    assert (NONE_PLAN.transformer_weights, NONE_PLAN.offload) == ("model-dtype", "none")


@pytest.mark.parametrize("total", list(CARDS))
@pytest.mark.parametrize("preset", [preset.value for preset in MemoryPreset])
def test_every_preset_resolves_on_every_card(preset: str, total: int) -> None:
    plan, notes = resolve(preset, total)
    assert plan.preset in {"none", "80gb", "24gb", "16gb", "12gb"}
    if preset == "auto":
        assert plan == PRESET_PLANS[MemoryPreset(CARDS[total])]
        chose = f"memory preset auto chose {CARDS[total]} for {total / GIB:.1f} GiB"
        assert notes == [f"{chose} of GPU memory"]
    elif preset == "none":
        assert plan == NONE_PLAN
    else:
        # With every package and an Ada GPU nothing falls back: the plan is the preset's own.
        assert plan == PRESET_PLANS[MemoryPreset(preset)]
    assert plan.preset in plan.describe()


@pytest.mark.parametrize(
    ("total", "expected"),
    [
        (H200, "80gb"),
        (A100_80, "80gb"),
        (int(44.4 * GIB), "80gb"),  # L40S, 48 GB
        (A100_40, "80gb"),  # the bf16 pipeline peaks ~36.7 GiB
        (int(31.4 * GIB), "24gb"),  # RTX 5090, 32 GB
        (RTX_4090, "24gb"),
        (int(19.5 * GIB), "24gb"),  # 20 GB cards: fp8 untiled peaks ~16.5 GiB
        (RTX_4080, "16gb"),
        (int(13.5 * GIB), "16gb"),
        (int(13.0 * GIB), "12gb"),
        (RTX_3060, "12gb"),
        (RTX_3070, "12gb"),  # below every preset: the least it can do, and a note
        (None, "none"),  # no GPU
    ],
)
def test_choose_preset_thresholds(total: int | None, expected: str) -> None:
    assert choose_preset(total) == expected


def test_a_gpu_smaller_than_every_preset_gets_12gb_with_a_warning() -> None:
    plan, notes = resolve("auto", RTX_3070)
    assert plan == PRESET_PLANS[MemoryPreset.GB12]
    assert len(notes) == 2
    assert "needs about 8.4 GiB" in notes[1]
    assert "7.6 GiB" in notes[1]
    assert "out-of-memory" in notes[1]


def test_a_preset_too_big_for_the_gpu_says_which_fits() -> None:
    plan, notes = resolve("80gb", RTX_4090)
    assert plan == PRESET_PLANS[MemoryPreset.GB80]  # the operator's choice stands
    assert notes == [
        "memory preset 80gb needs about 36.7 GiB at 1024x1024 and this GPU has 23.6 GiB: "
        "expect out-of-memory errors; --memory-preset 24gb fits it"
    ]


def test_a_preset_that_fits_has_no_notes() -> None:
    for total, preset in CARDS.items():
        assert resolve(preset, total) == (PRESET_PLANS[MemoryPreset(preset)], [])


def test_unknown_memory_is_not_a_reason_to_warn() -> None:
    assert resolve("12gb", None) == (PRESET_PLANS[MemoryPreset.GB12], [])
    assert resolve("auto", None)[0] == NONE_PLAN


def test_names_are_case_and_space_insensitive() -> None:
    assert resolve(" 24GB ")[0] == PRESET_PLANS[MemoryPreset.GB24]


def test_an_unknown_preset_names_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="unknown memory preset '8gb'") as info:
        resolve("8gb")
    for preset in MemoryPreset:
        assert preset.value in str(info.value)


def test_a_plan_cannot_offload_text_encoders_without_a_mechanism() -> None:
    with pytest.raises(ValueError, match="does not go with"):
        MemoryPlan("x", "fp8", "offload", "none", vae_tiling=False)
    with pytest.raises(ValueError, match="does not go with"):
        MemoryPlan("x", "fp8", "device", "group", vae_tiling=False)


def test_uses_offload() -> None:
    assert not uses_offload(NONE_PLAN)
    assert not uses_offload(PRESET_PLANS[MemoryPreset.GB80])
    for preset in (MemoryPreset.GB24, MemoryPreset.GB16, MemoryPreset.GB12):
        assert uses_offload(PRESET_PLANS[preset])


def test_describe_says_what_happens() -> None:
    line = PRESET_PLANS[MemoryPreset.GB12].describe()
    assert line.startswith("memory preset 12gb: ")
    assert "NF4 (bitsandbytes)" in line
    assert "text encoders in CPU memory" in line
    assert "tiled VAE" in line
    assert "\n" not in line


# --- fallbacks ----------------------------------------------------------------------------


def test_nf4_without_bitsandbytes_falls_back_to_fp8() -> None:
    plan, notes = resolve("12gb", RTX_3060, have_package=only("torchao"))
    assert plan == MemoryPlan("12gb", "fp8", "offload", "group", vae_tiling=True)
    assert "pip install bitsandbytes" in notes[0]
    assert "using fp8 weights instead" in notes[0]
    # FP8's 11.1 GiB transformer does not fit beside the work on a 12 GB card: said so.
    assert "needs about 13.3 GiB" in notes[1]
    assert "unless the quantization package named above is installed" in notes[1]


def test_nf4_without_any_backend_keeps_the_model_dtype_with_model_offload() -> None:
    plan, notes = resolve("12gb", None, have_package=only())
    assert (plan.transformer_weights, plan.text_encoders, plan.offload) == (
        "model-dtype",
        "offload",
        "model",
    )
    assert plan.vae_tiling  # the rest of the preset stands
    assert len(notes) == 1
    assert "pip install bitsandbytes" in notes[0]
    assert "pip install torchao" in notes[0]


def test_fp8_without_torchao_falls_back_to_nf4() -> None:
    plan, notes = resolve("24gb", have_package=only("bitsandbytes"))
    assert plan.transformer_weights == "nf4"
    assert plan.offload == "group"
    assert notes == [
        "memory preset 24gb: fp8 weights need torchao (pip install torchao); "
        "using nf4 weights instead"
    ]


def test_fp8_on_a_gpu_without_bf16_tensor_cores_falls_back_to_nf4() -> None:
    plan, notes = resolve("16gb", RTX_4080, capability=(7, 5))  # a T4
    assert plan.transformer_weights == "nf4"
    assert "compute capability 8.0 or newer (this GPU is 7.5)" in notes[0]


def test_fp8_weights_run_on_ampere() -> None:
    # Weight-only FP8 dequantizes to bf16 before each matmul: no FP8 tensor cores needed.
    assert resolve("24gb", capability=(8, 6)) == (PRESET_PLANS[MemoryPreset.GB24], [])


def test_an_old_gpu_without_bitsandbytes_keeps_the_model_dtype() -> None:
    plan, notes = resolve("24gb", None, have_package=only("torchao"), capability=(7, 0))
    assert plan.transformer_weights == "model-dtype"
    assert plan.offload == "model"
    assert "compute capability" in notes[0]
    assert "pip install bitsandbytes" in notes[0]


def test_unquantized_presets_need_no_package() -> None:
    for preset in ("80gb", "none"):
        plan, notes = resolve(preset, A100_80, have_package=only(), capability=(7, 0))
        assert plan.transformer_weights == "model-dtype"
        assert notes == []


@pytest.mark.parametrize("device_type", ["cpu", "mps"])
@pytest.mark.parametrize("preset", [preset.value for preset in MemoryPreset])
def test_without_cuda_every_preset_is_none(preset: str, device_type: str) -> None:
    plan, notes = resolve_memory_plan(preset, device_type, None, have_package=EVERYTHING)
    assert plan == NONE_PLAN
    if preset == "none":
        assert notes == []
    else:
        assert len(notes) == 1
        assert f"memory preset {preset} resolves to none on {device_type}" in notes[0]
        assert "need a CUDA GPU" in notes[0]


# --- quantization configs -----------------------------------------------------------------


def test_model_dtype_weights_need_no_quantization_config() -> None:
    assert quantization_config(PRESET_PLANS[MemoryPreset.GB80], torch.bfloat16) is None
    assert quantization_config(NONE_PLAN, torch.bfloat16, have_package=only()) is None


def test_nf4_quantizes_the_transformer_alone() -> None:
    # diffusers builds the BitsAndBytesConfig when the transformer loads, so the pipeline
    # config is built (and checked by diffusers) without bitsandbytes installed.
    config = quantization_config(
        PRESET_PLANS[MemoryPreset.GB12], torch.bfloat16, have_package=EVERYTHING
    )
    assert isinstance(config, PipelineQuantizationConfig)
    assert config.quant_backend == "bitsandbytes_4bit"
    assert config.components_to_quantize == ["transformer"]
    assert config.quant_kwargs == {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_compute_dtype": torch.bfloat16,
    }


def test_nf4_without_bitsandbytes_says_what_to_install() -> None:
    with pytest.raises(ImportError, match="pip install bitsandbytes"):
        quantization_config(PRESET_PLANS[MemoryPreset.GB12], torch.bfloat16, have_package=only())


def test_fp8_without_torchao_says_what_to_install() -> None:
    with pytest.raises(ImportError, match="pip install torchao"):
        quantization_config(PRESET_PLANS[MemoryPreset.GB24], torch.bfloat16, have_package=only())


def test_fp8_quantizes_the_transformer_alone_when_torchao_is_there() -> None:
    plan = PRESET_PLANS[MemoryPreset.GB24]
    if importlib.util.find_spec("torchao") is None:
        # TorchAoConfig takes a torchao object, so the config cannot exist without torchao;
        # even told the package is there, the error names it.
        with pytest.raises(ImportError, match="pip install torchao"):
            quantization_config(plan, torch.bfloat16, have_package=EVERYTHING)
        return
    from diffusers import TorchAoConfig

    config = quantization_config(plan, torch.bfloat16)
    assert isinstance(config, PipelineQuantizationConfig)
    assert list(config.quant_mapping) == ["transformer"]
    assert isinstance(config.quant_mapping["transformer"], TorchAoConfig)
    assert type(config.quant_mapping["transformer"].quant_type).__name__ == (
        "Float8WeightOnlyConfig"
    )


# --- placing a real (tiny) pipeline -----------------------------------------------------------


def generate(pipeline) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(7)
    images = pipeline(
        "a",
        num_inference_steps=1,
        width=64,
        height=64,
        guidance_scale=1.0,
        max_sequence_length=16,
        generator=generator,
        output_type="np",
    ).images
    return images[0]


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """The tiny model's image, the pipeline placed by nothing."""
    pipeline = build_tiny_pipeline("tiny")
    pipeline.set_progress_bar_config(disable=True)
    return generate(pipeline)


def spy_on_to(pipeline) -> list:
    """Record the devices diffusers' ``pipeline.to`` is called with (a CPU-only machine
    cannot see a move to the CPU otherwise)."""
    moves: list = []
    original = pipeline.to

    def to(*args, **kwargs):
        moves.append(args[0] if args else kwargs.get("device"))
        return original(*args, **kwargs)

    pipeline.to = to
    return moves


def placed(plan: MemoryPlan):
    pipeline = build_tiny_pipeline("tiny")
    pipeline.set_progress_bar_config(disable=True)
    place_pipeline(pipeline, plan, torch.device("cpu"))
    return pipeline


def test_place_none_on_cpu_generates(reference: np.ndarray) -> None:
    pipeline = build_tiny_pipeline("tiny")
    pipeline.set_progress_bar_config(disable=True)
    moves = spy_on_to(pipeline)
    place_pipeline(pipeline, NONE_PLAN, "cpu")
    assert moves == [torch.device("cpu")]
    assert pipeline.device == torch.device("cpu")
    assert not pipeline.vae.use_tiling
    image = generate(pipeline)
    assert image.shape == (64, 64, 3)
    assert image.std() > 0.01  # noise, not a blank
    np.testing.assert_array_equal(image, reference)


def test_group_offload_streams_the_text_encoders_only(reference: np.ndarray) -> None:
    # On CPU the onload device is the CPU: the hooks run, nothing moves, the image is equal.
    pipeline = build_tiny_pipeline("tiny")
    pipeline.set_progress_bar_config(disable=True)
    moves = spy_on_to(pipeline)
    place_pipeline(pipeline, PRESET_PLANS[MemoryPreset.GB12], "cpu")
    # Moving the whole pipeline would put T5 on the GPU: only the resident modules move.
    assert moves == []
    assert _is_group_offload_enabled(pipeline.text_encoder)
    assert _is_group_offload_enabled(pipeline.text_encoder_2)
    assert not _is_group_offload_enabled(pipeline.transformer)
    assert not _is_group_offload_enabled(pipeline.vae)
    assert pipeline.vae.use_tiling
    assert pipeline.vae.use_slicing
    np.testing.assert_array_equal(generate(pipeline), reference)


def test_model_offload_hooks_every_module(reference: np.ndarray) -> None:
    plan = MemoryPlan("24gb", "model-dtype", "offload", "model", vae_tiling=False)
    pipeline = placed(plan)
    for name in ("text_encoder", "text_encoder_2", "transformer", "vae"):
        assert hasattr(getattr(pipeline, name), "_hf_hook"), name
    assert not pipeline.vae.use_tiling
    np.testing.assert_array_equal(generate(pipeline), reference)
