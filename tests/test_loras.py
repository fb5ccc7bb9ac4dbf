"""LoRAs (issue 16): sources checked at submit, the disk cache, adapters on the GPU, and the
fal, BFL and OpenAI routes end to end, on the tiny models with LoRAs made by PEFT in the
tests (tests/loras.py) and served from a loopback HTTP server."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fluxserve.addresses import UrlPolicy
from fluxserve.config import Settings
from fluxserve.domain import GenerationRequest
from fluxserve.errors import InvalidRequest, LoraError
from fluxserve.lora.files import LoraFiles
from fluxserve.lora.sources import LoraPolicy, resolve
from fluxserve.runtime.base import GenerationInputs, LoraFile
from tests.conftest import running_app
from tests.helpers import b64, image_bytes, job_count, poll_result
from tests.loras import serving

PROMPT = "a lighthouse at dawn"
OPEN = UrlPolicy(allow_private=True)


# -- sources -----------------------------------------------------------------------------------


def test_paths_are_resolved_or_refused_at_submit(tmp_path):
    (tmp_path / "mine.safetensors").write_bytes(b"x")
    policy = LoraPolicy(lora_dir=tmp_path, urls=OPEN)
    registry = {"style": ("hf:acme/style", 0.7)}
    lookup = registry.get
    assert resolve("style", "p", policy, lookup) == ("hf:acme/style", 0.7)
    assert resolve("acme/x", "p", policy, lookup) == ("hf:acme/x", 1.0)
    assert resolve("acme/x:y/z.safetensors", "p", policy, lookup)[0] == "hf:acme/x:y/z.safetensors"
    assert (
        resolve("mine.safetensors", "p", policy, lookup)[0]
        == f"file:{tmp_path / 'mine.safetensors'}"
    )
    assert resolve("http://127.0.0.1/a.safetensors", "p", policy, lookup)[0].startswith("http")
    refusals = {
        "evil.ckpt": "pickle",
        "https://example.com/model.bin?x=1": "pickle",
        "../mine.safetensors": "must be",
        "not a path": "must be",
        "http://127.0.0.1/a.safetensors": "loopback",  # without --allow-private-urls
    }
    strict = LoraPolicy(lora_dir=tmp_path)
    for path, why in refusals.items():
        with pytest.raises(InvalidRequest, match=why) as raised:
            resolve(path, "loras.0.path", strict, lookup)
        assert raised.value.field == "loras.0.path"
    with pytest.raises(InvalidRequest, match="only registered"):
        resolve("https://example.com/a.safetensors", "p", LoraPolicy(allow_urls=False), lookup)
    with pytest.raises(InvalidRequest, match="allow-hub-loras"):
        resolve("acme/x", "p", LoraPolicy(allow_hub=False), lookup)
    assert resolve("style", "p", LoraPolicy(allow_urls=False, allow_hub=False), lookup)[1] == 0.7


# -- the disk cache ----------------------------------------------------------------------------


def files(directory: Path, max_bytes: int = 10**9, max_lora: int = 10**8) -> LoraFiles:
    return LoraFiles(directory, max_bytes, max_lora, OPEN)


def test_a_lora_is_downloaded_once_even_when_asked_for_at_once(lora_dir, tmp_path):
    cache = files(tmp_path / "cache")
    with serving(lora_dir) as server:
        url = server.url("a.safetensors")
        results = []
        threads = [threading.Thread(target=lambda: results.append(cache.fetch(url)))
                   for _ in range(4)]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert server.counts["/a.safetensors"] == 1
        assert len({r.digest for r in results}) == 1
        assert (cache.counters.downloads, cache.counters.hits) == (1, 3)
        again = cache.fetch(url)
        assert server.counts["/a.safetensors"] == 1
        # A cached file that changed on disk fails its hash check and is fetched again.
        again.path.write_bytes(again.path.read_bytes()[:-1] + b"\x00")
        assert cache.fetch(url).digest == again.digest
        assert server.counts["/a.safetensors"] == 2


def test_the_cache_evicts_the_least_recently_used(lora_dir, tmp_path):
    size = (lora_dir / "b.safetensors").stat().st_size
    cache = files(tmp_path / "cache", max_bytes=size + 100)  # room for one b
    with serving(lora_dir) as server:
        first = cache.fetch(server.url("a.safetensors"))
        cache.fetch(server.url("b.safetensors"))
        assert not first.path.exists()  # evicted
        cache.fetch(server.url("a.safetensors"))
        assert server.counts["/a.safetensors"] == 2  # fetched again on demand


@pytest.mark.parametrize(
    ("name", "code"),
    [("truncated.safetensors", "lora_invalid"), ("missing.safetensors", "lora_unavailable"),
     ("a.safetensors", "lora_too_large")],
)  # fmt: skip
def test_a_bad_download_is_a_lora_error_naming_it(lora_dir, tmp_path, name, code):
    cap = 1000 if code == "lora_too_large" else 10**8  # a.safetensors is larger than 1000
    cache = files(tmp_path / "cache", max_lora=cap)
    with serving(lora_dir) as server, pytest.raises(LoraError) as raised:
        cache.fetch(server.url(name))
    assert raised.value.code == code
    assert name in raised.value.message
    assert not list((tmp_path / "cache").glob("*.safetensors"))  # nothing half-kept


def test_a_private_address_is_refused_at_fetch_too(lora_dir, tmp_path):
    with serving(lora_dir) as server, pytest.raises(LoraError, match="loopback"):
        LoraFiles(tmp_path, 10**9, 10**8, UrlPolicy()).fetch(server.url("a.safetensors"))
    assert server.counts == {}  # refused before any connection


# -- adapters on the GPU (the runner) -----------------------------------------------------------


@pytest.fixture(scope="module")
def runner(tiny_model_dir, tiny_flux2_dir):
    from fluxserve.runtime.diffusers_runner import FluxRunner
    from fluxserve.weights import resolve_model

    models = [resolve_model(str(d), d.parent) for d in (tiny_model_dir, tiny_flux2_dir)]
    made = FluxRunner(models, max_loaded_loras=1)
    made.load()
    return made


def lora(lora_dir: Path, name: str, scale: float = 1.0) -> LoraFile:
    from fluxserve.lora.files import file_digest

    path = lora_dir / name
    return LoraFile(path, file_digest(path), name, scale)


def pixels(runner, model: str, loras: list[LoraFile]) -> np.ndarray:
    request = GenerationRequest(model=model, prompt=PROMPT, width=64, height=64, steps=2,
                                guidance=3.5 if model == "tiny" else None, seed=5)  # fmt: skip
    (image,) = runner.generate(request, GenerationInputs(loras=loras), lambda *a: None,
                               lambda: False)  # fmt: skip
    return np.asarray(image, dtype=np.int16)


def test_adapters_change_the_image_scale_0_does_not_and_the_lru_holds(runner, lora_dir):
    base = pixels(runner, "tiny", [])
    with_a = pixels(runner, "tiny", [lora(lora_dir, "a.safetensors")])
    assert np.abs(with_a - base).max() > 0
    assert np.array_equal(pixels(runner, "tiny", [lora(lora_dir, "a.safetensors", 0.0)]), base)
    both = pixels(runner, "tiny", [lora(lora_dir, "a.safetensors"),
                                   lora(lora_dir, "b.safetensors", 0.5)])  # fmt: skip
    assert np.abs(both - with_a).max() > 0
    assert np.array_equal(pixels(runner, "tiny", []), base)  # off again: the base model
    # max_loaded_loras=1: b pushed a out; a comes back and gives its image again.
    assert np.array_equal(pixels(runner, "tiny", [lora(lora_dir, "a.safetensors")]), with_a)
    adapters = next(iter(runner.adapters.values()))
    assert len(adapters.loaded) == 1
    assert runner.last_lora_report[0]["gpu"] in ("load", "loaded")


def test_a_flux1_lora_on_flux2_is_refused_naming_it(runner, lora_dir):
    with pytest.raises(LoraError) as raised:
        pixels(runner, "tiny-flux2", [lora(lora_dir, "a.safetensors")])
    assert raised.value.code == "lora_incompatible"
    assert "a.safetensors" in raised.value.message
    flux2 = pixels(runner, "tiny-flux2", [lora(lora_dir, "k.safetensors")])  # its own works
    assert np.abs(flux2 - pixels(runner, "tiny-flux2", [])).max() > 0


def test_hot_swap_gives_the_image_a_plain_load_gives(tiny_model_dir, lora_dir, tmp_path):
    """A LoRA on the same layers swaps in place; one on other layers falls back to a plain
    load (with a log line) and still gives its own image."""
    from diffusers import DiffusionPipeline

    from fluxserve.runtime.loras import AdapterSet
    from tests.loras import make_lora

    def image(pipeline) -> np.ndarray:
        import torch

        generator = torch.Generator().manual_seed(1)
        out = pipeline(prompt=PROMPT, width=64, height=64, num_inference_steps=2,
                       generator=generator, max_sequence_length=32)  # fmt: skip
        return np.asarray(out.images[0], dtype=np.int16)

    make_lora(tiny_model_dir, tmp_path / "c.safetensors", seed=4)  # a's layers and rank
    c = LoraFile(tmp_path / "c.safetensors", "c" * 64, "c.safetensors", 1.0)
    swapped = DiffusionPipeline.from_pretrained(tiny_model_dir)
    hot = AdapterSet(1, hotswap=True)
    hot.apply(swapped, [lora(lora_dir, "a.safetensors")], "tiny")
    assert hot.apply(swapped, [c], "tiny")[0]["gpu"] == "hotswap"
    for wanted in (c, lora(lora_dir, "b.safetensors")):
        plain = DiffusionPipeline.from_pretrained(tiny_model_dir)
        AdapterSet(1).apply(plain, [wanted], "tiny")
        if wanted is not c:  # b's layers differ from c's: a plain load instead
            assert hot.apply(swapped, [wanted], "tiny")[0]["gpu"] == "load"
        assert np.array_equal(image(swapped), image(plain))


def test_quantised_weights_refuse_loras_with_a_clear_error(runner, lora_dir):
    import dataclasses

    plan = runner.tier_plans["tiny"]
    runner.tier_plans["tiny"] = dataclasses.replace(plan, fp8_weights=True)
    try:
        with pytest.raises(LoraError, match="lossless") as raised:
            pixels(runner, "tiny", [lora(lora_dir, "a.safetensors")])
        assert raised.value.code == "lora_unsupported_weights"
    finally:
        runner.tier_plans["tiny"] = plan


# -- the routes, end to end ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(lora_dir) -> Iterator:
    with serving(lora_dir) as files_server:
        yield files_server


@pytest.fixture(scope="module")
def client(tiny_model_dir, tiny_flux2_dir, tiny_fill_dir, lora_dir, server,
           tmp_path_factory) -> Iterator[TestClient]:  # fmt: skip
    settings = Settings(
        model=[str(tiny_model_dir), str(tiny_flux2_dir), str(tiny_fill_dir)],
        data_dir=tmp_path_factory.mktemp("lora-data"), worker_mode="thread",
        allow_private_urls=True, lora_dir=lora_dir, max_lora_bytes=20_000,
    )  # fmt: skip
    yield from running_app(settings)


def fal_image(client: TestClient, endpoint: str, loras: list[dict], **extra) -> np.ndarray:
    body = {"prompt": PROMPT, "seed": 9, "image_size": {"width": 256, "height": 256},
            "num_inference_steps": 2, "loras": loras, **extra}  # fmt: skip
    response = client.post(f"/{endpoint}", json=body)
    assert response.status_code == 200, response.text
    data = client.get(response.json()["images"][0]["url"]).content
    return np.asarray(Image.open(io.BytesIO(data)), dtype=np.int16)


def test_fal_flux_lora_with_one_and_two_loras(client, server):
    a, b = server.url("a.safetensors"), server.url("b.safetensors")
    base = fal_image(client, "fal-ai/flux-lora", [])
    one = fal_image(client, "fal-ai/flux-lora", [{"path": a, "scale": 1}])
    assert np.abs(one - base).max() > 0
    downloads = server.counts.get("/a.safetensors", 0)
    two = fal_image(client, "fal-ai/flux-lora", [{"path": a}, {"path": b, "scale": 0.6}])
    assert np.abs(two - one).max() > 0
    assert server.counts["/a.safetensors"] == downloads  # the second request downloads nothing
    zero = fal_image(client, "fal-ai/flux-lora", [{"path": a, "scale": 0}])
    assert np.array_equal(zero, base)


def test_fal_flux2_lora(client, server):
    base = fal_image(client, "fal-ai/flux-2/lora", [])
    styled = fal_image(client, "fal-ai/flux-2/lora", [{"path": server.url("k.safetensors")}])
    assert np.abs(styled - base).max() > 0


@pytest.mark.parametrize(
    ("path", "code"),
    [("a.safetensors", "lora_incompatible"),  # a FLUX.1 LoRA (from --lora-dir) on FLUX.2
     ("truncated.safetensors", "lora_invalid")],
)  # fmt: skip
def test_a_bad_lora_ends_its_job_with_a_code_and_the_server_goes_on(client, path, code):
    body = {"prompt": PROMPT, "loras": [{"path": path}], "image_size": "square",
            "num_inference_steps": 2}  # fmt: skip
    response = client.post("/fal-ai/flux-2/lora", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error_type"] == code
    assert path.split(".")[0] in response.json()["detail"]
    fal_image(client, "fal-ai/flux-2/lora", [])  # the worker is fine


def test_an_oversized_lora_fails_its_job(client, server):
    body = {"prompt": PROMPT, "loras": [{"path": server.url("big.safetensors")}]}
    response = client.post("/fal-ai/flux-lora", json=body)
    assert (response.status_code, response.json()["error_type"]) == (422, "lora_too_large")


@pytest.mark.parametrize(
    ("loras", "field"),
    [([{"path": "model.ckpt"}], "loras.0.path"), ([{"path": "x y"}], "loras.0.path"),
     ([{"path": "acme/x", "scale": 9}], "loras.0.scale"),
     ([{"path": "acme/x"}] * 9, "loras")],
)  # fmt: skip
def test_malformed_loras_are_422_at_submit(client, loras, field):
    before = job_count(client)
    response = client.post("/fal-ai/flux-lora", json={"prompt": PROMPT, "loras": loras})
    assert response.status_code == 422, response.text
    assert field in [".".join(map(str, e["loc"][1:])) for e in response.json()["detail"]]
    assert job_count(client) == before


def test_bfl_finetunes_from_the_registry(client):
    services = client.app.state.services
    services.loras.register("house-style", "k.safetensors", 0.9)  # a --lora-dir file
    assert client.get("/v1/my_finetunes").json() == {"finetunes": ["house-style"]}
    details = client.get("/v1/finetune_details", params={"finetune_id": "house-style"}).json()
    assert details["finetune_details"]["finetune_strength"] == 0.9
    body = {"prompt": PROMPT, "finetune_id": "house-style", "finetune_strength": 1.5,
            "aspect_ratio": "1:1", "steps": 2}  # fmt: skip
    submitted = client.post("/v1/flux-pro-1.1-ultra-finetuned", json=body)
    assert submitted.status_code == 200, submitted.text
    result = poll_result(client, submitted.json()["id"], timeout=120)
    assert result["status"] == "Ready", result
    job = services.store.get(submitted.json()["id"])
    assert job.request.loras == ((f"file:{services.settings.lora_dir / 'k.safetensors'}", 1.5),)
    assert job.report.loras[0]["scale"] == 1.5
    sample = Image.open(io.BytesIO(client.get(result["result"]["sample"]).content))
    assert "k.safetensors@1.5" in str(sample.info)  # the image's metadata names it
    services.loras.register("fill-style", "a.safetensors")  # FLUX.1: on the Fill route
    fill = {"image": b64(image_bytes((64, 64), transparent_box=(16, 16, 48, 48))),
            "finetune_id": "fill-style", "steps": 15}  # fmt: skip
    filled = client.post("/v1/flux-pro-1.0-fill-finetuned", json=fill)
    assert poll_result(client, filled.json()["id"], timeout=120)["status"] == "Ready"
    unknown = client.post("/v1/flux-pro-1.1-ultra-finetuned",
                          json={**body, "finetune_id": "acme/x"})  # fmt: skip
    assert unknown.json()["detail"][0]["loc"] == ["body", "finetune_id"]
    deleted = client.post("/v1/delete_finetune", json={"finetune_id": "house-style"})
    assert deleted.json()["deleted_finetune_id"] == "house-style"
    assert client.get("/v1/my_finetunes").json() == {"finetunes": ["fill-style"]}


def test_openai_loras_extra_field(client, server):
    body = {"prompt": PROMPT, "model": "tiny", "size": "256x256", "steps": 2,
            "loras": [{"path": server.url("a.safetensors"), "scale": 0.8}]}  # fmt: skip
    response = client.post("/v1/images/generations", json=body)
    assert response.status_code == 200, response.text
    bad = client.post("/v1/images/generations", json={**body, "loras": [{"path": "x.pt"}]})
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "loras.0.path")


def test_only_jobs_with_the_same_loras_share_a_batch():
    plain = GenerationRequest(model="m", prompt="p", width=64, height=64, steps=2,
                              guidance=None, seed=1)  # fmt: skip
    import dataclasses

    a = dataclasses.replace(plain, loras=(("hf:x/a", 1.0),))
    assert len({plain.batch_key, a.batch_key,
                dataclasses.replace(a, loras=(("hf:x/a", 0.5),)).batch_key}) == 3  # fmt: skip
    assert a.batch_key == dataclasses.replace(plain, seed=2, loras=a.loras).batch_key


def test_fluxserve_loras_command(tmp_path):
    from tests.test_cli import run

    added = run("loras", "add", "mine", "acme/style:w.safetensors", "--scale", "0.7",
                "--data-dir", str(tmp_path))  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert "mine  hf:acme/style:w.safetensors  scale 0.7" in run(
        "loras", "list", "--data-dir", str(tmp_path)).stdout  # fmt: skip
    refused = run("loras", "add", "bad", "weights.ckpt", "--data-dir", str(tmp_path))
    assert refused.returncode == 2
    assert "pickle" in refused.stderr
    assert run("loras", "remove", "mine", "--data-dir", str(tmp_path)).returncode == 0


def test_get_result_says_where_each_lora_came_from(client, server):
    body = {"prompt": PROMPT, "width": 256, "height": 256, "steps": 2,
            "loras": [{"path": server.url("b.safetensors") + "?fresh", "scale": 0.4}]}  # fmt: skip
    first = poll_result(client, client.post("/v1/tiny", json=body).json()["id"], timeout=120)
    again = poll_result(client, client.post("/v1/tiny", json=body).json()["id"], timeout=120)
    (lora,) = first["details"]["loras"]
    assert (lora["scale"], lora["disk"]) == (0.4, "download")
    assert again["details"]["loras"][0]["disk"] == "cached"
    assert again["details"]["loras"][0]["gpu"] in ("loaded", "load")


def test_metrics_count_lora_cache_hits_downloads_and_swaps(client, server):
    import time

    body = {"prompt": PROMPT, "width": 256, "height": 256, "steps": 2,
            "loras": [{"path": server.url("a.safetensors"), "scale": 0.3}]}  # fmt: skip
    for _ in range(2):  # the second finds it in the disk cache
        poll_result(client, client.post("/v1/tiny", json=body).json()["id"], timeout=120)
    wanted = ('fluxserve_lora_disk_total{result="cached"}', "fluxserve_lora_swap_seconds_count",
              'fluxserve_lora_gpu_total{result="')  # fmt: skip
    deadline = time.monotonic() + 10  # /metrics reads ended jobs a moment after they end
    while True:
        text = client.get("/metrics").text
        if all(line in text for line in wanted) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for line in wanted:
        assert line in text, line


def test_a_worker_prefers_jobs_whose_loras_are_loaded_but_starves_no_one(tmp_path):
    import dataclasses
    import time

    from fluxserve.domain import Job
    from fluxserve.store.opening import open_store

    settings = Settings(model=["tiny"], data_dir=tmp_path)
    tmp_path.mkdir(exist_ok=True)
    store = open_store(settings)
    plain = GenerationRequest(model="tiny", prompt="p", width=64, height=64, steps=2,
                              guidance=None, seed=1)  # fmt: skip
    styled = dataclasses.replace(plain, loras=(("hf:acme/style", 1.0),))
    now = time.time()
    for job_id, request, age in (("old", plain, 5.0), ("styled", styled, 1.0),
                                 ("older", plain, 30.0)):  # fmt: skip
        store.create(Job(id=job_id, request=request, created_at=now - age))
    prefer = (styled.lora_set_key,)
    # "older" has waited past the patience: it goes first whatever is loaded.
    assert store.claim("w", ["tiny"], 30, prefer, patience=20).id == "older"
    assert store.claim("w", ["tiny"], 30, prefer, patience=20).id == "styled"  # loaded
    assert store.claim("w", ["tiny"], 30, prefer, patience=20).id == "old"
    store.close()
