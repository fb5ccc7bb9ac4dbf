"""Optimisation tiers: what each tier plans on each machine, what falls back, and what the
runner does with it on the tiny model (CPU)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from diffusers import FluxPipeline
from pydantic import ValidationError

from fluxserve.bootstrap import resolve_models
from fluxserve.config import Settings
from fluxserve.domain import GenerationRequest
from fluxserve.errors import ConfigurationError
from fluxserve.runtime.base import GenerationInputs
from fluxserve.runtime.diffusers_runner import FluxRunner
from fluxserve.runtime.tiers import Capabilities, Tier, job_tier, parse_tiers, plan_tier
from fluxserve.specs import infer_spec
from fluxserve.weights import ResolvedModel

CPU = Capabilities(device_type="cpu", can_compile=True)
H200 = Capabilities(
    device_type="cuda",
    cuda_capability=(9, 0),
    have_torchao=True,
    attention_backends=("_flash_3",),
    can_compile=True,
)
A100 = Capabilities(device_type="cuda", cuda_capability=(8, 0), have_torchao=True, can_compile=True)


# --- the plan: pure decisions -----------------------------------------------------------


def test_fal_acceleration_asks_for_a_tier_capped_at_the_models():
    assert job_tier(None, Tier.CACHE) is Tier.CACHE  # no ask: the model's tier
    assert job_tier("none", Tier.CACHE) is Tier.LOSSLESS
    assert job_tier("regular", Tier.CACHE) is Tier.FP8
    assert job_tier("high", Tier.CACHE) is Tier.CACHE
    assert job_tier("high", Tier.LOSSLESS) is Tier.LOSSLESS  # never above the model's
    assert job_tier("regular", Tier.FP8) is Tier.FP8


def test_each_tier_on_a_gpu_that_runs_everything():
    lossless = plan_tier(Tier.LOSSLESS, H200)
    assert (lossless.compile, lossless.fp8_weights, lossless.step_cache) == (True, False, False)
    assert lossless.fuse_qkv
    assert lossless.attention_backend == "_flash_3"
    fp8 = plan_tier(Tier.FP8, H200)
    assert fp8.effective is Tier.FP8
    assert fp8.fp8_weights
    assert not fp8.step_cache
    cache = plan_tier(Tier.CACHE, H200)
    assert cache.effective is Tier.CACHE
    assert cache.fp8_weights
    assert cache.step_cache
    assert not (lossless.notes)
    assert not (fp8.notes)
    assert not (cache.notes)


def test_fp8_falls_back_to_lossless_on_cpu_and_says_why():
    plan = plan_tier(Tier.FP8, CPU)
    assert plan.effective is Tier.LOSSLESS
    assert not plan.fp8_weights
    assert any("CUDA" in note for note in plan.notes)
    assert "asked for fp8" in plan.describe()


def test_fp8_falls_back_on_a_gpu_without_fp8_tensor_cores():
    plan = plan_tier(Tier.FP8, A100)
    assert plan.effective is Tier.LOSSLESS
    assert any("8.0" in note and "8.9" in note for note in plan.notes)


def test_fp8_falls_back_without_torchao():
    caps = Capabilities(device_type="cuda", cuda_capability=(9, 0), can_compile=True)
    plan = plan_tier(Tier.FP8, caps)
    assert not plan.fp8_weights
    assert any("torchao" in note for note in plan.notes)


def test_the_cache_tier_keeps_its_step_cache_when_fp8_falls_back():
    plan = plan_tier(Tier.CACHE, CPU)
    assert plan.step_cache
    assert not plan.fp8_weights
    assert plan.notes  # the fp8 part fell back, and the log says so


def test_compile_is_auto_on_cuda_only_and_falls_back_without_a_backend():
    assert not plan_tier(Tier.LOSSLESS, CPU).compile
    assert plan_tier(Tier.LOSSLESS, CPU, compile_mode="on").compile
    assert not plan_tier(Tier.LOSSLESS, H200, compile_mode="off").compile
    no_triton = Capabilities(device_type="cuda", cuda_capability=(9, 0))
    plan = plan_tier(Tier.LOSSLESS, no_triton)
    assert not plan.compile
    assert any("compile" in note for note in plan.notes)


def test_cuda_graphs_only_where_compiled_on_cuda_and_without_the_step_cache():
    assert plan_tier(Tier.LOSSLESS, H200, cuda_graphs=True).cuda_graphs
    assert "CUDA graphs" in plan_tier(Tier.FP8, H200, cuda_graphs=True).describe()
    assert not plan_tier(Tier.LOSSLESS, H200).cuda_graphs  # off unless asked for
    cached = plan_tier(Tier.CACHE, H200, cuda_graphs=True)
    assert not cached.cuda_graphs
    assert any("overwrites" in note for note in cached.notes)
    cpu = plan_tier(Tier.LOSSLESS, CPU, compile_mode="on", cuda_graphs=True)
    assert not cpu.cuda_graphs
    assert any("need CUDA" in note for note in cpu.notes)


def test_weights_a_memory_preset_quantised_are_not_quantised_again():
    assert not plan_tier(Tier.LOSSLESS, H200, weights_quantized=True).fuse_qkv
    plan = plan_tier(Tier.FP8, H200, weights_quantized=True)
    assert not plan.fp8_weights
    assert any("memory preset" in note for note in plan.notes)


def test_tier_flags_set_every_model_or_one():
    models = ["flux-dev", "flux-schnell"]
    assert parse_tiers([], models) == {"flux-dev": Tier.LOSSLESS, "flux-schnell": Tier.LOSSLESS}
    assert parse_tiers(["fp8"], models) == {"flux-dev": Tier.FP8, "flux-schnell": Tier.FP8}
    assert parse_tiers(["fp8", "flux-schnell=cache"], models)["flux-schnell"] is Tier.CACHE
    with pytest.raises(ValueError, match="no model 'flux-pro' is loaded"):
        parse_tiers(["flux-pro=fp8"], models)
    with pytest.raises(ValueError, match="lossless, fp8, cache"):
        parse_tiers(["turbo"], models)


def test_settings_refuse_bad_tiers_and_warmup_sizes(tmp_path):
    with pytest.raises(ValidationError, match="tier 'turbo'"):
        Settings(data_dir=tmp_path, tier=["turbo"])
    with pytest.raises(ValidationError, match="WxH"):
        Settings(data_dir=tmp_path, warmup=["big"])
    with pytest.raises(ValidationError, match="64 to 4096"):
        Settings(data_dir=tmp_path, warmup=["0x0"])
    assert Settings(data_dir=tmp_path, tier="fp8,tiny=cache").tier == ["fp8", "tiny=cache"]


def test_a_tier_for_a_model_not_loaded_stops_the_start(tmp_path):
    settings = Settings(data_dir=tmp_path, model=["tiny"], tier=["flux-dev=fp8"], worker=False)
    with pytest.raises(ConfigurationError, match="no model 'flux-dev'"):
        resolve_models(settings)


# --- the runner on the tiny model ----------------------------------------------------------


def resolved(path) -> ResolvedModel:
    return ResolvedModel(path.name, infer_spec(path.name, path), path)


def request(acceleration: str | None = None, seed: int = 7) -> GenerationRequest:
    return GenerationRequest(
        model="tiny", prompt="a lighthouse", width=64, height=64, steps=6, guidance=3.5,
        seed=seed, acceleration=acceleration,
    )  # fmt: skip


def generate(runner: FluxRunner, req: GenerationRequest) -> np.ndarray:
    (image,) = runner.generate(req, GenerationInputs(), lambda done, total: None, lambda: False)
    return np.asarray(image, dtype=np.float32)


def count_block_calls(runner: FluxRunner) -> list[int]:
    """Counts how often the last transformer block computes: once per step without the
    cache. (A layer inside it: the cache's hook answers for the block without running it.)"""
    calls: list[int] = []
    block = runner.pipelines["tiny"].transformer.single_transformer_blocks[-1]
    block.proj_out.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_lossless_fuses_qkv_and_matches_plain_diffusers(tiny_model_dir, caplog):
    caplog.set_level(logging.INFO, logger="fluxserve")
    runner = FluxRunner([resolved(tiny_model_dir)])
    runner.load()
    attention = runner.pipelines["tiny"].transformer.transformer_blocks[0].attn
    assert attention.fused_projections
    assert "tier lossless, fused QKV" in caplog.text

    plain = FluxPipeline.from_pretrained(tiny_model_dir)
    plain.set_progress_bar_config(disable=True)
    req = request()
    expected = plain(
        prompt=req.prompt, width=64, height=64, num_inference_steps=req.steps,
        guidance_scale=req.guidance, max_sequence_length=256,
        generator=torch.Generator("cpu").manual_seed(req.seed),
    ).images[0]  # fmt: skip
    difference = np.abs(generate(runner, req) - np.asarray(expected, dtype=np.float32))
    assert difference.max() <= 2  # float rounding, on a 0-255 scale


@pytest.fixture(scope="module")
def cache_runner(tiny_model_dir) -> FluxRunner:
    # A threshold this high makes the random-weight model skip steps; real runs use 0.05.
    runner = FluxRunner(
        [resolved(tiny_model_dir)],
        tiers={"tiny": Tier.CACHE},
        step_cache_threshold=0.9,
    )
    runner.load()
    return runner


def test_the_cache_tier_skips_steps_and_fal_none_turns_it_off(cache_runner):
    calls = count_block_calls(cache_runner)
    generate(cache_runner, request())  # no acceleration asked: the model's tier
    cached_calls = len(calls)
    assert cached_calls < 6
    calls.clear()
    generate(cache_runner, request(acceleration="none"))
    assert len(calls) == 6  # every step ran
    calls.clear()
    generate(cache_runner, request(acceleration="high"))
    assert len(calls) == cached_calls


def test_the_cache_tier_on_cpu_logs_the_fp8_fallback(tiny_model_dir, caplog):
    caplog.set_level(logging.INFO, logger="fluxserve")
    runner = FluxRunner([resolved(tiny_model_dir)], tiers={"tiny": Tier.FP8})
    runner.load()
    assert "tier fp8 falls back to lossless weights: FP8 matmuls need a CUDA GPU" in caplog.text
    assert runner.tier_plans["tiny"].effective is Tier.LOSSLESS
    assert generate(runner, request()).std() > 0


def test_compiled_on_cpu_gives_the_eager_image(tiny_model_dir, tmp_path):
    eager = FluxRunner([resolved(tiny_model_dir)])
    eager.load()
    compiled = FluxRunner(
        [resolved(tiny_model_dir)],
        compile_mode="on",
        compile_cache_dir=tmp_path / "compile-cache",
    )
    compiled.load()
    block = compiled.pipelines["tiny"].transformer.transformer_blocks[0]
    assert block._compiled_call_impl is not None  # regional compilation
    difference = np.abs(generate(compiled, request()) - generate(eager, request()))
    assert difference.max() <= 2


def test_warm_up_runs_every_kind_of_model(tiny_model_dir, tiny_kontext_dir, tiny_fill_dir):
    dirs = (tiny_model_dir, tiny_kontext_dir, tiny_fill_dir)
    runner = FluxRunner([resolved(d) for d in dirs])
    runner.load()
    steps: list[int] = []
    block = runner.pipelines["tiny-fill"].transformer.transformer_blocks[0]
    block.register_forward_hook(lambda *_: steps.append(1))
    runner.warm_up([(64, 64)])
    assert steps == [1, 1]  # two warm-up steps


def test_a_memory_preset_on_cpu_resolves_to_none_and_says_so(tiny_model_dir, caplog):
    caplog.set_level(logging.INFO, logger="fluxserve")
    runner = FluxRunner([resolved(tiny_model_dir)], memory_preset="12gb")
    runner.load()
    assert runner.memory_plan.preset == "none"
    assert "memory preset 12gb resolves to none on cpu" in caplog.text
    assert generate(runner, request()).std() > 0


def test_batches_default_to_one_job_under_a_low_memory_preset(tiny_model_dir, tmp_path):
    from fluxserve.engine.child import batch_size
    from fluxserve.runtime.memory import PRESET_PLANS, MemoryPreset

    runner = FluxRunner([resolved(tiny_model_dir)])
    settings = Settings(data_dir=tmp_path)
    assert batch_size(settings, runner) == 4  # the default, all weights on the device
    runner.memory_plan = PRESET_PLANS[MemoryPreset.GB12]
    assert batch_size(settings, runner) == 1
    assert batch_size(Settings(data_dir=tmp_path, max_batch_size=3), runner) == 3
