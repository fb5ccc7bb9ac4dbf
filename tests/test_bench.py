"""``fluxserve bench``, the full-size random-weight models and benchmarks/quality.py."""

from __future__ import annotations

import importlib.util
import json
import math
import resource
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fluxserve.cli.main import main
from fluxserve.runtime import fullsize

ROW_KEYS = {"engine", "tier", "batch", "s_per_image_p50", "ms_per_step", "peak_mem_gb",
            "images_per_s"}  # fmt: skip


def load_quality():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py"
    spec = importlib.util.spec_from_file_location("bench_quality", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


quality = load_quality()


def positive_finite(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


# -- fluxserve bench -------------------------------------------------------------------------
def test_bench_on_tiny_measures_both_engines_and_writes_the_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main([
        "bench", "--model", "tiny", "--data-dir", str(tmp_path / "data"), "--device", "cpu",
        "--runs", "2", "--warmup", "1", "--batch", "1,2", "--tiers", "lossless,cache",
        "--size", "64x64", "--steps", "2", "--json", str(out),
    ])  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report) == {"hardware", "versions", "config", "results"}
    assert {"python", "torch", "diffusers", "transformers", "fluxserve"} <= set(report["versions"])
    assert report["hardware"]["gpu"] is None
    assert report["hardware"]["cores"] >= 1
    config = report["config"]
    assert (config["model"], config["width"], config["height"], config["steps"]) == (
        "tiny",
        64,
        64,
        2,
    )
    assert config["prompt_cache"] is False
    assert config["order"] == "interleaved"  # CPU: the engines' calls alternate

    rows = report["results"]
    assert all(set(row) == ROW_KEYS for row in rows)
    assert sorted((r["engine"], r["tier"] or "", r["batch"]) for r in rows) == sorted(
        [("diffusers", "", 1), ("diffusers", "", 2)]
        + [("fluxserve", tier, b) for tier in ("lossless", "cache") for b in (1, 2)]
    )
    for row in rows:
        for key in ("s_per_image_p50", "ms_per_step", "images_per_s"):
            assert positive_finite(row[key]), (row, key)
        assert row["peak_mem_gb"] is None  # CPU: no CUDA allocator to ask
        assert row["images_per_s"] * row["s_per_image_p50"] == pytest.approx(1.0)
        # A step is part of a call: a call takes longer than its 2 steps.
        assert row["s_per_image_p50"] * row["batch"] * 1000 > 2 * row["ms_per_step"]

    printed = capsys.readouterr().out
    assert "vs diff b1" in printed
    assert "fluxserve  cache" in printed
    assert "step cache" in printed  # the cache tier's plan is described


def test_bench_refuses_random_weights_for_a_model_without_a_full_size(tmp_path, capsys):
    code = main(["bench", "--model", "tiny", "--random-weights", "--data-dir", str(tmp_path)])
    assert code == 1
    assert "--random-weights builds flux-schnell" in capsys.readouterr().err


def test_bench_rejects_a_bad_size():
    with pytest.raises(SystemExit):
        main(["bench", "--size", "100x64"])


FULL_CONFIG = fullsize.fullsize_config  # before any test replaces it


def small(name: str) -> fullsize.FullsizeConfig:
    """``name``'s configs at tiny widths: the same code path, seconds on a CPU."""
    config = FULL_CONFIG(name)
    return replace(
        config,
        transformer={**config.transformer, "num_layers": 1, "num_single_layers": 1,
                     "attention_head_dim": 16, "num_attention_heads": 2,
                     "joint_attention_dim": 32, "pooled_projection_dim": 32,
                     "axes_dims_rope": [4, 4, 8]},
        text_encoder={**config.text_encoder, "hidden_size": 32, "intermediate_size": 37,
                      "num_hidden_layers": 1, "num_attention_heads": 4, "projection_dim": 32},
        text_encoder_2={**config.text_encoder_2, "d_model": 32, "d_kv": 8, "d_ff": 37,
                        "num_layers": 1, "num_heads": 4},
        vae={**config.vae, "block_out_channels": [8, 8, 8, 8], "layers_per_block": 1,
             "norm_num_groups": 4},
    )  # fmt: skip


def test_bench_random_weights_builds_the_model_instead_of_loading_it(tmp_path, monkeypatch):
    monkeypatch.setattr(fullsize, "fullsize_config", small)  # full size needs a big GPU
    out = tmp_path / "bench.json"
    code = main([
        "bench", "--model", "flux-schnell", "--random-weights", "--device", "cpu",
        "--data-dir", str(tmp_path / "data"), "--runs", "1", "--warmup", "0", "--batch", "1",
        "--tiers", "lossless", "--size", "64x64", "--json", str(out), "--order", "sequential",
    ])  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert report["config"]["random_weights"] is True
    assert report["config"]["order"] == "sequential"
    assert report["config"]["steps"] == 4  # schnell's default
    assert [(r["engine"], r["tier"]) for r in report["results"]] == [
        ("diffusers", None),
        ("fluxserve", "lossless"),
    ]
    assert not (tmp_path / "data" / "models").exists()  # nothing downloaded or written


# -- the full-size models --------------------------------------------------------------------
def test_full_size_parameter_counts_are_flux1s_without_allocating():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    dev = fullsize.parameter_counts("flux-dev")
    assert dev["transformer"] == pytest.approx(11.9e9, rel=0.005)  # FLUX.1 is "12B"
    assert dev["text_encoder_2"] == pytest.approx(4.76e9, rel=0.005)  # T5-XXL's encoder
    assert dev["text_encoder"] == pytest.approx(123e6, rel=0.01)  # CLIP-L's text tower
    assert dev["vae"] == pytest.approx(83.8e6, rel=0.01)
    schnell = fullsize.parameter_counts("flux-schnell")
    assert schnell["transformer"] < dev["transformer"]  # no guidance embedder
    assert fullsize.parameter_counts("flux-fill-dev")["transformer"] > dev["transformer"]
    # 16.9e9 parameters in float32 would be 68 GB: they were never allocated.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 2 * 1024**2


def test_full_size_modules_have_flux1s_configs():
    modules = fullsize.modules_on_meta(fullsize.fullsize_config("flux-fill-dev"))
    transformer = modules["transformer"]
    assert all(p.device.type == "meta" for p in transformer.parameters())
    assert transformer.x_embedder.in_features == 384
    assert transformer.proj_out.out_features == 64
    assert len(transformer.transformer_blocks) == 19
    assert len(transformer.single_transformer_blocks) == 38
    assert transformer.inner_dim == 3072
    t5 = modules["text_encoder_2"].config
    assert (t5.d_model, t5.d_ff, t5.num_layers, t5.num_heads, t5.vocab_size) == (
        4096,
        10240,
        24,
        64,
        32128,
    )
    assert t5.is_gated_act
    clip = modules["text_encoder"].config
    assert (clip.hidden_size, clip.num_hidden_layers, clip.vocab_size) == (768, 12, 49408)
    vae = modules["vae"].config
    assert (vae.scaling_factor, vae.shift_factor, vae.latent_channels) == (0.3611, 0.1159, 16)
    assert fullsize.fullsize_config("flux-schnell").scheduler["use_dynamic_shifting"] is False
    assert fullsize.fullsize_config("flux-dev").transformer["guidance_embeds"] is True
    with pytest.raises(ValueError, match="no full-size"):
        fullsize.fullsize_config("tiny")


def test_a_random_build_is_materialised_seeded_and_runs():
    first = fullsize.build_random_pipeline(small("flux-fill-dev"), "cpu", torch.float32)
    assert type(first).__name__ == "FluxFillPipeline"
    again = fullsize.build_random_pipeline(small("flux-fill-dev"), "cpu", torch.float32)
    for (name, a), b in zip(
        first.transformer.state_dict().items(), again.transformer.state_dict().values(),
        strict=True,
    ):  # fmt: skip
        assert torch.equal(a, b), name  # the same seed: the same weights
    t5 = first.text_encoder_2
    assert t5.shared.weight is t5.encoder.embed_tokens.weight  # tied, as from_pretrained
    assert torch.equal(first.text_encoder.embeddings.position_ids[0], torch.arange(77))
    assert float(first.transformer.norm_out.linear.weight.std()) == pytest.approx(0.02, rel=0.1)
    image = Image.new("RGB", (64, 64), "gray")
    with torch.inference_mode():
        out = first(prompt="x", image=image, mask_image=Image.new("L", (64, 64), 255),
                    width=64, height=64, num_inference_steps=1, max_sequence_length=16,
                    output_type="pt")  # fmt: skip
    assert torch.isfinite(out.images).all()


# -- benchmarks/quality.py -------------------------------------------------------------------
def noise(seed: int, size=(64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def test_psnr_is_infinite_for_identical_images_and_exact_for_a_known_error():
    image = noise(1)
    assert quality.psnr(image, image) == math.inf
    flat = np.full((32, 32, 3), 100, np.uint8)
    # MSE 25: 10 log10(255^2 / 25) = 34.151 dB
    assert quality.psnr(flat, flat + 5) == pytest.approx(34.1514, abs=1e-4)
    assert math.isfinite(quality.psnr(image, noise(2)))


def test_ssim_is_one_for_an_image_with_itself_and_matches_the_formula():
    image = noise(3)
    assert quality.ssim(image, image) == 1.0
    # Flat images: no variance, so SSIM is the luminance term (2ab + C1) / (a^2 + b^2 + C1).
    c1 = (0.01 * 255) ** 2
    a, b = np.full((32, 32, 3), 100, np.uint8), np.full((32, 32, 3), 150, np.uint8)
    assert quality.ssim(a, b) == pytest.approx((2 * 100 * 150 + c1) / (100**2 + 150**2 + c1))
    other = noise(4)
    assert quality.ssim(image, other) == pytest.approx(quality.ssim(other, image))
    assert abs(quality.ssim(image, other)) < 0.1  # independent noise: no structure shared
    blurred = Image.fromarray(np.asarray(image)).resize((32, 24)).resize((48, 64))
    assert 0.0 < quality.ssim(image, blurred) < 0.9


def test_quality_compares_each_tier_with_lossless(tmp_path, capsys):
    out = tmp_path / "quality.json"
    code = quality.main([
        "--model", "tiny", "--data-dir", str(tmp_path / "data"), "--device", "cpu",
        "--tiers", "cache", "--prompt", "a red fox", "--seeds", "1,2", "--size", "64x64",
        "--steps", "2", "--json", str(out),
    ])  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report["means"]) == {"lossless (again)", "cache", "diffusers"}
    again = [r for r in report["images"] if r["tier"] == "lossless (again)"]
    assert len(again) == 2
    assert all(r["identical"] and r["psnr"] is None and r["ssim"] == 1.0 for r in again)
    for row in report["images"]:
        assert row["identical"] or math.isfinite(row["psnr"])
        assert -1.0 <= row["ssim"] <= 1.0
    assert "mean vs lossless" in capsys.readouterr().out


def test_bench_random_weights_builds_flux2(tmp_path, monkeypatch):
    """flux2-klein-4b and flux2-dev through the same path, at tiny widths (full size needs a
    big GPU; their full-size parameter counts are checked in test_flux2.py)."""
    from fluxserve.runtime import fullsize_flux2

    # Deep enough for the hidden states the pipelines stack (up to layer 30), 16 wide.
    text = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 31,
            "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 8}  # fmt: skip
    tiny = {"num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16,
            "num_attention_heads": 2, "axes_dims_rope": (4, 4, 4, 4),
            "in_channels": 16}  # fmt: skip
    vae = {"block_out_channels": (8, 8, 8, 8), "layers_per_block": 1, "latent_channels": 4,
           "norm_num_groups": 4}  # fmt: skip
    for name in ("flux2-klein-4b", "flux2-dev"):
        full = fullsize_flux2.FLUX2_CONFIGS[name]
        if name == "flux2-dev":
            vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                      "num_attention_heads": 2, "head_dim": 8, "image_size": 32,
                      "patch_size": 8}  # fmt: skip
            encoder = {"text": {**full.text_encoder["text"], **text}, "vision": vision}
        else:
            encoder = {**full.text_encoder, **text}
        small_config = replace(
            full, transformer={**full.transformer, **tiny, "joint_attention_dim": 48},
            text_encoder=encoder, vae=vae,
        )  # fmt: skip
        monkeypatch.setitem(fullsize_flux2.FLUX2_CONFIGS, name, small_config)
        out = tmp_path / f"{name}.json"
        code = main([
            "bench", "--model", name, "--random-weights", "--device", "cpu",
            "--data-dir", str(tmp_path / "data"), "--runs", "1", "--warmup", "0",
            "--batch", "1", "--tiers", "lossless", "--size", "64x64", "--steps", "1",
            "--json", str(out), "--order", "sequential",
        ])  # fmt: skip
        assert code == 0, name
        rows = json.loads(out.read_text())["results"]
        assert [(r["engine"], r["tier"]) for r in rows] == [("diffusers", None),
                                                            ("fluxserve", "lossless")]  # fmt: skip


def test_bench_times_lora_switches_by_load_and_by_hot_swap(tmp_path, capsys, tiny_model_dir):
    from tests.loras import make_lora

    loras = [make_lora(tiny_model_dir, tmp_path / f"{n}.safetensors", seed=n) for n in (1, 2)]
    out = tmp_path / "bench.json"
    code = main([
        "bench", "--model", str(tiny_model_dir), "--device", "cpu", "--runs", "2",
        "--warmup", "0", "--batch", "1", "--tiers", "lossless", "--size", "64x64",
        "--steps", "1", "--json", str(out), "--lora", str(loras[0]), "--lora", str(loras[1]),
    ])  # fmt: skip
    assert code == 0
    switch = json.loads(out.read_text())["config"]["lora_switch"]
    assert switch["hotswap_took"] == ["hotswap"]  # same layers: swapped in place
    assert switch["load_unload_ms_p50"] > 0
    assert switch["hotswap_ms_p50"] > 0
    assert "LoRA switch" in capsys.readouterr().out
