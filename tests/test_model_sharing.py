"""Several models in one worker: the tiny variants, and components loaded once."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from fluxserve.domain import GenerationRequest, Task
from fluxserve.runtime.base import GenerationInputs
from fluxserve.runtime.diffusers_runner import FluxRunner
from fluxserve.specs import ModelKind, infer_spec
from fluxserve.weights import ResolvedModel, component_fingerprint


def resolved(path) -> ResolvedModel:
    return ResolvedModel(path.name, infer_spec(path.name, path), path)


def test_tiny_variants_are_marked_with_their_kind(tiny_model_dir, tiny_kontext_dir, tiny_fill_dir):
    assert infer_spec("a", tiny_model_dir).kind is ModelKind.TEST
    assert infer_spec("b", tiny_kontext_dir).kind is ModelKind.KONTEXT
    assert infer_spec("c", tiny_fill_dir).kind is ModelKind.FILL
    assert all(infer_spec("x", d).random_weights for d in (tiny_kontext_dir, tiny_fill_dir))


def test_a_model_directory_is_recognised_by_its_pipeline_class(tmp_path, tiny_fill_dir):
    copy = tmp_path / "some-fill-model"
    shutil.copytree(tiny_fill_dir, copy)
    (copy / "fluxserve_tiny.json").unlink()  # no marker: read model_index.json
    assert json.loads((copy / "model_index.json").read_text())["_class_name"] == "FluxFillPipeline"
    spec = infer_spec("some-fill-model", copy)
    assert spec.kind is ModelKind.FILL
    assert spec.default_guidance == 30.0  # FLUX.1 Fill [dev]'s defaults


def test_fingerprints_match_for_identical_components_only(tiny_model_dir, tiny_fill_dir):
    for shared in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
        assert component_fingerprint(tiny_model_dir / shared) == component_fingerprint(
            tiny_fill_dir / shared
        )
    assert component_fingerprint(tiny_model_dir / "transformer") != component_fingerprint(
        tiny_fill_dir / "transformer"
    )
    assert component_fingerprint(tiny_model_dir / "missing") is None


def test_a_changed_weight_file_changes_the_fingerprint(tmp_path, tiny_model_dir):
    copy = tmp_path / "vae"
    shutil.copytree(tiny_model_dir / "vae", copy)
    before = component_fingerprint(copy)
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert component_fingerprint(copy) != before


@pytest.fixture(scope="module")
def runner(tiny_model_dir, tiny_kontext_dir, tiny_fill_dir) -> FluxRunner:
    runner = FluxRunner([resolved(d) for d in (tiny_model_dir, tiny_kontext_dir, tiny_fill_dir)])
    runner.load()
    return runner


def test_one_runner_loads_shared_components_once(runner, tiny_kontext_dir, tiny_fill_dir):
    base, kontext, fill = (runner.pipelines[name] for name in runner.model_names)
    for component in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"):
        assert getattr(kontext, component) is getattr(base, component)
        assert getattr(fill, component) is getattr(base, component)
    assert kontext.transformer is not base.transformer
    assert fill.transformer.config.in_channels == 384
    assert runner.shared[tiny_fill_dir.name] == sorted(
        ["vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"]
    )


def test_image_to_image_reuses_the_text_to_image_modules(runner, tiny_model_dir):
    request = GenerationRequest(
        model=tiny_model_dir.name, prompt="x", width=64, height=64, steps=4, guidance=3.0,
        seed=5, task=Task.IMAGE_TO_IMAGE, strength=0.5,
    )  # fmt: skip
    steps_seen = []
    images = runner.generate(
        request,
        GenerationInputs(images=[Image.new("RGB", (64, 64), (200, 30, 30))]),
        lambda done, total: steps_seen.append((done, total)),
        lambda: False,
    )
    assert images[0].size == (64, 64)
    img2img = runner._img2img[tiny_model_dir.name]
    assert img2img.transformer is runner.pipelines[tiny_model_dir.name].transformer
    # strength 0.5 of 4 steps runs the last 2, and progress counts those.
    assert steps_seen == [(1, 2), (2, 2)]


def test_on_demand_loads_a_model_with_its_first_job(tiny_model_dir, tiny_kontext_dir):
    runner = FluxRunner([resolved(tiny_model_dir), resolved(tiny_kontext_dir)], on_demand=True)
    runner.load()
    assert runner.pipelines == {}
    request = GenerationRequest(
        model=tiny_kontext_dir.name, prompt="x", width=64, height=64, steps=2, guidance=3.0,
        seed=1, task=Task.EDIT,
    )  # fmt: skip
    (image,) = runner.generate(request, GenerationInputs(), lambda *_: None, lambda: False)
    assert image.size == (64, 64)
    assert list(runner.pipelines) == [tiny_kontext_dir.name]  # the other is still not loaded


@pytest.fixture(scope="module")
def uncached_runner(tiny_model_dir, tiny_kontext_dir, tiny_fill_dir) -> FluxRunner:
    runner = FluxRunner(
        [resolved(d) for d in (tiny_model_dir, tiny_kontext_dir, tiny_fill_dir)],
        prompt_cache_bytes=0,
    )
    runner.load()
    return runner


def _images(runner: FluxRunner, request: GenerationRequest, inputs: GenerationInputs) -> list:
    return [
        img.tobytes() for img in runner.generate(request, inputs, lambda *_: None, lambda: False)
    ]


@pytest.mark.parametrize(
    ("model", "task", "num_images"),
    [("tiny", Task.TEXT_TO_IMAGE, 1), ("tiny", Task.TEXT_TO_IMAGE, 2),
     ("tiny", Task.IMAGE_TO_IMAGE, 1), ("tiny-kontext", Task.EDIT, 2),
     ("tiny-fill", Task.FILL, 1)],
)  # fmt: skip
def test_cached_prompt_embeddings_give_the_same_images(
    runner, uncached_runner, model, task, num_images
):
    start = Image.new("RGB", (64, 64), (200, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    inputs = GenerationInputs(images=[] if task is Task.TEXT_TO_IMAGE else [start], mask=mask)
    request = GenerationRequest(
        model=model, prompt=f"a red fox {task.value} x{num_images}", width=64, height=64, steps=2,
        guidance=3.0, seed=11, task=task, num_images=num_images,
        strength=0.5 if task is Task.IMAGE_TO_IMAGE else None,
    )  # fmt: skip
    hits = runner.prompt_cache.hits
    first = _images(runner, request, inputs)
    again = _images(runner, request, inputs)  # the prompt is cached now
    assert runner.prompt_cache.hits == hits + 1
    assert len(first) == num_images
    assert first == again == _images(uncached_runner, request, inputs)


def test_the_prompt_cache_is_bounded_and_evicts_the_least_recent():
    import torch

    from fluxserve.runtime.prompt_cache import PromptCache

    entry = {"prompt_embeds": torch.zeros(1, 4, 8), "pooled": torch.zeros(1, 8)}  # 160 bytes
    cache = PromptCache(max_bytes=400)
    for key in ("a", "b", "c"):
        cache.get(key, lambda: entry)
    assert len(cache) == 2  # "a" went
    assert cache.bytes <= 400
    calls = []
    cache.get("a", lambda: calls.append(1) or entry)
    assert calls == [1]  # a miss: it was evicted
    cache.get("c", lambda: calls.append(2) or entry)
    assert calls == [1]  # a hit
    assert PromptCache(max_bytes=10).get("big", lambda: entry) is entry  # too big: not kept


@pytest.mark.parametrize("cached", [True, False])
def test_a_batch_gives_each_request_its_solo_image(runner, uncached_runner, cached):
    import numpy as np

    chosen = runner if cached else uncached_runner
    requests = [
        GenerationRequest(
            model="tiny", prompt=prompt, width=64, height=64, steps=2, guidance=3.0, seed=seed
        )  # fmt: skip
        for prompt, seed in (("a red fox", 1), ("a blue whale", 2), ("a red fox", 3))
    ]
    steps = []
    batch = chosen.generate_batch(requests, lambda d, t: steps.append((d, t)), lambda: False)
    assert len(batch) == 3
    assert steps == [(1, 2), (2, 2)]  # one denoising loop for the whole batch
    for request, image in zip(requests, batch, strict=True):
        (solo,) = chosen.generate(request, GenerationInputs(), lambda *_: None, lambda: False)
        difference = np.abs(np.asarray(image, np.int16) - np.asarray(solo, np.int16))
        assert difference.max() <= 2, (request.seed, difference.max())  # float tolerance
    # Different seeds and prompts make different images: the batch is not one image thrice.
    assert batch[0].tobytes() != batch[2].tobytes() != batch[1].tobytes()


def test_a_batch_refuses_requests_of_different_keys(runner):
    small = GenerationRequest(model="tiny", prompt="x", width=64, height=64, steps=2,
                              guidance=3.0, seed=1)  # fmt: skip
    large = GenerationRequest(model="tiny", prompt="x", width=128, height=64, steps=2,
                              guidance=3.0, seed=1)  # fmt: skip
    with pytest.raises(ValueError, match="batch key"):
        runner.generate_batch([small, large], lambda *_: None, lambda: False)
