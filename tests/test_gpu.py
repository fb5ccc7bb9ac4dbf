"""What only a CUDA GPU can check: the compiled and FP8 tiers run there and keep the image.

Skipped, with the reason shown, on machines without CUDA (``conftest.py``). The same
tests on the tiny model run anywhere a GPU is lent; full-size speed is ``fluxserve bench``'s.
"""

from __future__ import annotations

import numpy as np
import pytest

from fluxserve.domain import GenerationRequest
from fluxserve.runtime.base import GenerationInputs
from fluxserve.runtime.diffusers_runner import FluxRunner
from fluxserve.runtime.tiers import Tier
from fluxserve.specs import infer_spec
from fluxserve.weights import ResolvedModel

pytestmark = pytest.mark.gpu


def runner_at(
    tiny_model_dir, tier: Tier, compile_mode: str = "off", cuda_graphs: bool = False
) -> FluxRunner:
    model = ResolvedModel("tiny", infer_spec("tiny", tiny_model_dir), tiny_model_dir)
    runner = FluxRunner(
        [model],
        device="cuda",
        tiers={"tiny": tier},
        compile_mode=compile_mode,
        cuda_graphs=cuda_graphs,
    )
    runner.load()
    return runner


def image(runner: FluxRunner) -> np.ndarray:
    request = GenerationRequest(
        model="tiny", prompt="a lighthouse", width=256, height=256, steps=4, guidance=3.5, seed=3
    )
    (result,) = runner.generate(request, GenerationInputs(), lambda *_: None, lambda: False)
    return np.asarray(result, dtype=np.float32)


def test_compiled_lossless_matches_eager_on_cuda(tiny_model_dir):
    eager = image(runner_at(tiny_model_dir, Tier.LOSSLESS))
    compiled_runner = runner_at(tiny_model_dir, Tier.LOSSLESS, compile_mode="on")
    assert compiled_runner.tier_plans["tiny"].compile
    assert np.abs(image(compiled_runner) - eager).mean() < 2  # bf16 rounding, 0-255 scale


def test_cuda_graphs_replay_gives_the_eager_image(tiny_model_dir):
    eager = image(runner_at(tiny_model_dir, Tier.LOSSLESS))
    graphed = runner_at(tiny_model_dir, Tier.LOSSLESS, compile_mode="on", cuda_graphs=True)
    assert graphed.tier_plans["tiny"].cuda_graphs
    image(graphed)  # the first call records the graphs; the second replays them
    assert np.abs(image(graphed) - eager).mean() < 2


def test_fp8_tier_quantises_the_transformer_on_fp8_gpus(tiny_model_dir):
    pytest.importorskip("torchao", reason="the fp8 tier needs pip install 'fluxserve[fp8]'")
    import torch

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("this GPU has no FP8 tensor cores")
    runner = runner_at(tiny_model_dir, Tier.FP8)
    assert runner.tier_plans["tiny"].fp8_weights
    weight = runner.pipelines["tiny"].transformer.transformer_blocks[0].ff.net[2].weight
    assert "Float8" in type(weight).__name__  # a torchao FP8 tensor, not bf16
    assert image(runner).std() > 0


def test_cache_tier_runs_on_cuda(tiny_model_dir):
    runner = runner_at(tiny_model_dir, Tier.CACHE)
    assert runner.tier_plans["tiny"].step_cache
    assert image(runner).std() > 0


@pytest.mark.parametrize("preset", ["24gb", "12gb"])
def test_memory_presets_generate_on_cuda(tiny_model_dir, preset):
    model = ResolvedModel("tiny", infer_spec("tiny", tiny_model_dir), tiny_model_dir)
    runner = FluxRunner([model], device="cuda", memory_preset=preset, compile_mode="off")
    runner.load()
    assert runner.memory_plan.text_encoders == "offload"
    assert image(runner).std() > 0


@pytest.mark.parametrize("variant", ["tiny-flux2", "tiny-flux2-dev"])
def test_flux2_compiled_fp8_tier_runs_and_keeps_the_image_on_cuda(
    variant, tiny_flux2_dir, tiny_flux2_dev_dir
):
    """FLUX.2's transformers compile regionally and take FP8 (or fall back with a note)."""
    directory = tiny_flux2_dir if variant == "tiny-flux2" else tiny_flux2_dev_dir
    model = ResolvedModel(variant, infer_spec(variant, directory), directory)
    request = GenerationRequest(
        model=variant, prompt="a lighthouse", width=256, height=256, steps=4,
        guidance=model.spec.default_guidance, seed=3,
    )  # fmt: skip
    images = []
    for tier, compile_mode in ((Tier.LOSSLESS, "off"), (Tier.LOSSLESS, "on"), (Tier.FP8, "on")):
        runner = FluxRunner([model], device="cuda", tiers={variant: tier},
                            compile_mode=compile_mode)  # fmt: skip
        runner.load()
        (result,) = runner.generate(request, GenerationInputs(), lambda *_: None, lambda: False)
        images.append(np.asarray(result, dtype=np.float32))
    eager, compiled, fp8 = images
    assert np.abs(eager - compiled).mean() < 2.0  # compiled kernels: float noise only
    assert fp8.std() > 1.0  # FP8 still makes an image, not a constant
