"""FLUX.2 (issue 14): the registry and routing, the runner on the tiny FLUX.2 models, and
the BFL, fal and OpenAI endpoints end to end (one thread worker serving tiny-flux2 and
tiny-flux2-dev). Every refusal is a 422 (OpenAI: 400) naming the field, with nothing
queued. Images are 64-256 px and runs are 1-4 steps, so this takes seconds on a CPU.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fluxserve.config import Settings
from fluxserve.domain import GenerationRequest, Task
from fluxserve.errors import ConfigurationError, InvalidRequest, ModelNotAvailable
from fluxserve.jobs import imageprep
from fluxserve.jobs.pricing import PriceTable
from fluxserve.jobs.routing import ModelRouter
from fluxserve.runtime.base import GenerationInputs
from fluxserve.runtime.tiers import Capabilities, Tier, plan_tier
from fluxserve.specs import MODEL_SPECS, ModelKind, infer_spec
from tests.conftest import running_app
from tests.helpers import (
    assert_openai_error,
    b64,
    data_uri,
    fetch_image,
    image_bytes,
    job_count,
    poll_result,
)

PROMPT = "a lighthouse at dawn"


def specs(*names: str) -> dict:
    return {name: MODEL_SPECS[name] for name in names}


# -- registry and routing ----------------------------------------------------------------------


def test_the_registry_has_flux2_with_licences_and_defaults():
    klein = MODEL_SPECS["flux2-klein-4b"]
    assert klein.kind is ModelKind.FLUX2_KLEIN
    assert klein.is_flux2
    assert (klein.default_steps, klein.uses_guidance, klein.max_references) == (4, False, 4)
    assert klein.licence == "apache-2.0"
    base = MODEL_SPECS["flux2-klein-base-4b"]
    assert (base.default_steps, base.default_guidance) == (50, 4.0)
    assert MODEL_SPECS["flux2-klein-9b"].licence.startswith("flux-non-commercial")
    dev = MODEL_SPECS["flux2-dev"]
    assert (dev.kind, dev.max_references, dev.source) == (
        ModelKind.FLUX2_DEV, 8, "black-forest-labs/FLUX.2-dev",
    )  # fmt: skip
    assert Settings().model == ["flux2-klein-4b"]  # the default model


@pytest.mark.parametrize(
    ("loaded", "expected"),
    [
        # Only the tiny models: each stands in for its kind.
        (("tiny-flux2", "tiny-flux2-dev"),
         {"flux-2-pro": "tiny-flux2-dev", "flux-2-flex": "tiny-flux2-dev",
          "flux-2-klein-4b": "tiny-flux2", "flux-2-klein-9b-preview": "tiny-flux2",
          "fal-ai/flux-2/edit": "tiny-flux2-dev", "fal-ai/flux-2/klein/9b/base": "tiny-flux2",
          "flux-kontext-pro": "tiny-flux2-dev"}),
        # Real weights before tiny ones; pro/max/flex take the largest FLUX.2 without [dev].
        (("flux2-klein-4b", "flux2-klein-base-9b", "tiny-flux2-dev"),
         {"flux-2-pro": "flux2-klein-base-9b", "flux-2-klein-4b": "flux2-klein-4b",
          "flux-2-klein-9b": "flux2-klein-base-9b", "flux-kontext-max": "flux2-klein-base-9b"}),
        # [dev] wins pro/max/flex; fal's /base ids want the undistilled [klein] first.
        (("flux2-klein-4b", "flux2-klein-base-4b", "flux2-dev"),
         {"flux-2-max": "flux2-dev", "flux-2-klein-4b": "flux2-klein-4b",
          "fal-ai/flux-2/klein/4b/base/edit": "flux2-klein-base-4b",
          "fal-ai/flux-2/klein/4b": "flux2-klein-4b"}),
        # A Kontext model keeps the Kontext routes.
        (("tiny-kontext", "tiny-flux2"), {"flux-kontext-pro": "tiny-kontext"}),
    ],
)  # fmt: skip
def test_which_model_answers_each_flux2_endpoint(loaded, expected):
    router = ModelRouter(specs(*loaded))
    assert {endpoint: router.route(endpoint).name for endpoint in expected} == expected


def test_a_klein_route_without_that_klein_is_not_served():
    router = ModelRouter(specs("flux2-klein-4b", "flux2-dev"))
    with pytest.raises(ModelNotAvailable, match="flux-2-klein-9b"):
        router.route("flux-2-klein-9b")  # [dev] does not stand in for [klein]
    with pytest.raises(ModelNotAvailable):
        ModelRouter(specs("tiny")).route("flux-2-pro")  # FLUX.1 does not serve FLUX.2
    alias = ModelRouter(specs("flux2-klein-4b", "flux2-dev"), {"flux-2-pro": "flux2-klein-4b"})
    assert alias.route("flux-2-pro").name == "flux2-klein-4b"


def test_local_flux2_directories_are_recognised(tmp_path, tiny_flux2_dir, tiny_flux2_dev_dir):
    assert infer_spec("mine", tiny_flux2_dir).kind is ModelKind.FLUX2_KLEIN
    assert infer_spec("mine", tiny_flux2_dev_dir).kind is ModelKind.FLUX2_DEV
    # Without the tiny marker: the pipeline class, is_distilled and the width decide.
    plain = tmp_path / "klein"
    (plain / "transformer").mkdir(parents=True)
    index = {"_class_name": "Flux2KleinPipeline", "is_distilled": False}
    (plain / "model_index.json").write_text(json.dumps(index))
    (plain / "transformer" / "config.json").write_text(json.dumps({"num_attention_heads": 32}))
    spec = infer_spec("klein", plain)
    assert (spec.name, spec.size_class, spec.default_steps) == ("klein", "9b", 50)


def test_full_size_flux2_architectures_have_the_advertised_parameter_counts():
    from fluxserve.runtime.fullsize import parameter_counts

    for name, billions in (("flux2-klein-4b", 4), ("flux2-klein-9b", 9), ("flux2-dev", 32)):
        transformer = parameter_counts(name)["transformer"] / 1e9
        assert billions * 0.95 <= transformer <= billions * 1.05, (name, transformer)
    assert 22 <= parameter_counts("flux2-dev")["text_encoder"] / 1e9 <= 25  # Mistral-Small 24B


def test_the_cache_tier_falls_back_on_flux2_with_a_note():
    caps = Capabilities(device_type="cpu")
    plan = plan_tier(Tier.CACHE, caps, "off", step_cache_works=False)
    assert not plan.step_cache
    assert plan.effective is not Tier.CACHE
    assert any("step cache" in note for note in plan.notes)
    assert plan_tier(Tier.CACHE, caps, "off").step_cache  # FLUX.1 keeps it


# -- sizes, references and prices (no model) ---------------------------------------------------


def test_flux2_sizes():
    spec = MODEL_SPECS["flux2-klein-4b"]
    wide = Image.new("RGB", (1900, 1000))
    assert imageprep.flux2_size(spec, None, None, []) == (1024, 1024)
    assert imageprep.flux2_size(spec, 0, 0, [wide]) == (1888, 992)  # the grid, under 4 MP
    assert imageprep.flux2_size(spec, 64, 2048, []) == (64, 2048)
    for width, height, field in ((100, 64, "width"), (64, 40, "height"), (512, None, "height"),
                                 (2064, 2048, "width")):  # fmt: skip
        with pytest.raises(InvalidRequest) as caught:
            imageprep.flux2_size(spec, width, height, [])
        assert caught.value.field == field


def test_references_are_checked_and_stored_at_most_one_megapixel():
    spec = MODEL_SPECS["flux2-dev"]
    big = Image.new("RGB", (2000, 1500))
    prepared = imageprep.prepare_edit(spec, [big], 1024, 1024, ["input_image"])
    (stored,) = prepared.images
    assert stored.width * stored.height <= imageprep.REFERENCE_AREA
    for size, name in (((32, 200), "input_image"), ((900, 100), "input_image")):
        with pytest.raises(InvalidRequest) as caught:
            imageprep.prepare_edit(spec, [Image.new("RGB", size)], 512, 512, [name])
        assert caught.value.field == name
    with pytest.raises(InvalidRequest) as caught:
        imageprep.check_reference_count(MODEL_SPECS["flux2-klein-4b"], [f"r{i}" for i in range(5)])
    assert caught.value.field == "r4"  # the first one too many


def test_the_price_table(tmp_path):
    request = GenerationRequest(model="m", prompt="p", width=2048, height=1024, steps=4,
                                guidance=None, seed=1, endpoint="flux-2-pro", num_images=2,
                                input_sizes=((1000, 1000),))  # fmt: skip
    assert PriceTable().cost(request) == 0.0
    table = tmp_path / "prices.json"
    table.write_text(json.dumps({"flux-2-pro": {"first_mp": 3, "extra_mp": 1.5, "input_mp": 1}}))
    # (3 + (2.097152 - 1) * 1.5 + 1.0 * 1) per image, two images
    assert PriceTable.load(table).cost(request) == pytest.approx(
        2 * (3 + 1.097152 * 1.5 + 1), abs=1e-4
    )
    table.write_text(json.dumps({"*": {"per_image": 1}}))
    with pytest.raises(ConfigurationError, match="per_image"):
        PriceTable.load(table)


def test_a_requests_input_sizes_survive_the_job_table_and_split_batches():
    request = GenerationRequest(
        model="m", prompt="p", width=256, height=256, steps=4, guidance=None, seed=1,
        input_sizes=((96, 64), (64, 64)),
    )  # fmt: skip
    again = GenerationRequest.from_dict(json.loads(json.dumps(request.to_dict())))
    assert again == request
    other = dataclasses.replace(request, input_sizes=((96, 64),))
    assert other.batch_key != request.batch_key
    plain = dataclasses.replace(request, input_sizes=())
    assert "x" not in plain.batch_key.rsplit("|", 1)[1]  # FLUX.1 keys are unchanged


# -- the runner on the tiny FLUX.2 models ------------------------------------------------------


def _request(model: str, seed: int, **changes) -> GenerationRequest:
    spec = MODEL_SPECS.get(model) or MODEL_SPECS["tiny-flux2"]
    values = {"model": model, "prompt": PROMPT, "width": 128, "height": 128, "steps": 2,
              "guidance": spec.default_guidance, "seed": seed}  # fmt: skip
    return GenerationRequest(**{**values, **changes})


def _pixels(images: list[Image.Image]) -> list[np.ndarray]:
    return [np.asarray(image, dtype=np.int16) for image in images]


@pytest.fixture(scope="module")
def flux2_models(tiny_flux2_dir: Path, tiny_flux2_dev_dir: Path, tmp_path_factory) -> list:
    """tiny-flux2, tiny-flux2-dev, and a [klein] base (CFG) copy of tiny-flux2."""
    from fluxserve.weights import ResolvedModel, resolve_model

    base_dir = tmp_path_factory.mktemp("models") / "tiny-flux2-base"
    shutil.copytree(tiny_flux2_dir, base_dir)
    index = json.loads((base_dir / "model_index.json").read_text())
    (base_dir / "model_index.json").write_text(json.dumps({**index, "is_distilled": False}))
    base_spec = dataclasses.replace(MODEL_SPECS["tiny-flux2"], name="tiny-flux2-base",
                                    default_guidance=4.0)  # fmt: skip
    return [
        resolve_model("tiny-flux2", tiny_flux2_dir.parent),
        resolve_model("tiny-flux2-dev", tiny_flux2_dev_dir.parent),
        ResolvedModel("tiny-flux2-base", base_spec, base_dir),
    ]


def _runner(models: list, cache: bool):
    from fluxserve.runtime.diffusers_runner import FluxRunner

    runner = FluxRunner(models, prompt_cache_bytes=(64 << 20) if cache else 0)
    runner.load()
    return runner


@pytest.fixture(scope="module")
def flux2_runners(flux2_models):
    """The same models with and without the prompt cache."""
    return _runner(flux2_models, cache=True), _runner(flux2_models, cache=False)


def _run(runner, request, inputs=None) -> list[Image.Image]:
    return runner.generate(request, inputs or GenerationInputs(), lambda *a: None, lambda: False)


@pytest.mark.parametrize("model", ["tiny-flux2", "tiny-flux2-dev", "tiny-flux2-base"])
def test_same_seed_same_image_with_or_without_the_prompt_cache(flux2_runners, model):
    cached, uncached = flux2_runners
    request = _request(model, seed=7, num_images=2)
    first, again, plain = _run(cached, request), _run(cached, request), _run(uncached, request)
    assert len(first) == 2
    assert first[0].size == (128, 128)
    assert [i.tobytes() for i in first] == [i.tobytes() for i in again]
    for a, b in zip(_pixels(first), _pixels(plain), strict=True):
        assert np.abs(a - b).max() <= 1
    assert first[0].tobytes() != _run(cached, _request(model, seed=8))[0].tobytes()


@pytest.mark.parametrize("model", ["tiny-flux2", "tiny-flux2-dev", "tiny-flux2-base"])
@pytest.mark.parametrize("cached", [True, False])
def test_a_flux2_batch_gives_each_request_its_solo_image(flux2_runners, model, cached):
    runner = flux2_runners[0 if cached else 1]
    requests = [_request(model, seed=s, prompt=p) for s, p in ((1, "a red fox"), (2, "a boat"))]
    batch = runner.generate_batch(requests, lambda *a: None, lambda: False)
    solos = [_run(runner, r)[0] for r in requests]
    for together, alone in zip(_pixels(batch), _pixels(solos), strict=True):
        assert np.abs(together - alone).max() <= 2  # the FLUX.1 batch tests' tolerance


def test_references_go_to_the_pipeline_as_a_list(flux2_runners):
    runner = flux2_runners[0]
    references = [Image.new("RGB", (96, 64), c) for c in ("red", "blue", "green")]
    request = _request("tiny-flux2-dev", seed=3, task=Task.EDIT, width=160, height=96)
    edited = _run(runner, request, GenerationInputs(images=references))
    assert edited[0].size == (160, 96)
    fewer = _run(runner, request, GenerationInputs(images=references[:1]))
    assert edited[0].tobytes() != fewer[0].tobytes()  # every reference counts


# -- the endpoints, end to end -----------------------------------------------------------------


@pytest.fixture(scope="module")
def client(tiny_flux2_dir, tiny_flux2_dev_dir, tmp_path_factory) -> Iterator[TestClient]:
    data = tmp_path_factory.mktemp("flux2-data")
    settings = Settings(model=[str(tiny_flux2_dir), str(tiny_flux2_dev_dir)],
                        data_dir=data, worker_mode="thread")  # fmt: skip
    yield from running_app(settings)


def newest_job(client: TestClient):
    import sqlalchemy as sa

    from fluxserve.store.tables import jobs

    store = client.app.state.services.store
    with store.engine.connect() as conn:
        newest = sa.select(jobs.c.id).order_by(jobs.c.seq.desc()).limit(1)
        return store.get(conn.execute(newest).scalar_one())


def references(count: int, start: int = 0) -> dict[str, str]:
    """BFL's input_image ... input_image_N, each a different size (base64 PNG)."""
    names = imageprep.reference_names("input_image", count)
    return {name: b64(image_bytes((96 + 16 * (start + i), 64))) for i, name in enumerate(names)}


def bfl_run(client: TestClient, endpoint: str, body: dict) -> tuple[dict, Image.Image]:
    response = client.post(f"/v1/{endpoint}", json={"prompt": PROMPT, "seed": 5, **body})
    assert response.status_code == 200, response.text
    submitted = response.json()
    result = poll_result(client, submitted["id"])
    assert result["status"] == "Ready", result
    return submitted, fetch_image(client, result["result"]["sample"])


KLEIN_ROUTES = ["flux-2-klein-4b", "flux-2-klein-9b", "flux-2-klein-9b-preview"]
ROUTES = ["flux-2-pro", "flux-2-max", "flux-2-flex", "flux-2-pro-preview", *KLEIN_ROUTES]


@pytest.mark.parametrize("endpoint", ROUTES)
def test_each_bfl_flux2_route_generates_and_edits(client, endpoint):
    steps = {"steps": 2} if endpoint == "flux-2-flex" else {}
    submitted, image = bfl_run(client, endpoint, {"width": 192, "height": 128, **steps})
    assert image.size == (192, 128)
    assert (submitted["input_mp"], submitted["output_mp"], submitted["cost"]) == (0.0, 0.02, 0.0)
    most = 4 if endpoint in KLEIN_ROUTES else 8
    for count in (1, 3, most):
        submitted, image = bfl_run(client, endpoint, {**references(count), **steps})
        assert image.size == (96, 64)  # the first reference's size
        stored = sum((96 + 16 * i) * 64 for i in range(count)) / 1e6
        assert submitted["input_mp"] == round(stored, 2)


def test_the_flux2_job_is_what_the_request_says(client):
    bfl_run(client, "flux-2-klein-4b", {**references(2), "width": 128, "height": 256})
    job = newest_job(client)  # the newest
    request = job.request
    assert (request.model, request.task, request.steps, request.guidance) == (
        "tiny-flux2", Task.EDIT, 4, None,
    )  # fmt: skip
    assert request.input_sizes == ((96, 64), (112, 64))
    assert (request.width, request.height) == (128, 256)
    flex, _ = bfl_run(client, "flux-2-flex", {"width": 128, "height": 128})
    flex_job = client.app.state.services.store.get(flex["id"])
    # BFL's flex defaults on a model that takes guidance; prompt upsampling asked for.
    assert (flex_job.request.steps, flex_job.request.guidance) == (50, 5.0)
    assert flex_job.request.prompt_upsampling is True


def test_same_seed_and_request_give_the_same_image(client):
    body = {**references(2), "seed": 11}
    _, first = bfl_run(client, "flux-2-pro", body)
    _, again = bfl_run(client, "flux-2-pro", body)
    assert first.tobytes() == again.tobytes()


def test_kontext_routes_run_on_flux2_when_no_kontext_model_is_loaded(client):
    _, image = bfl_run(client, "flux-kontext-pro", {"input_image": b64(image_bytes((128, 64)))})
    assert image.width > image.height  # the reference's shape at the model's base area


@pytest.mark.parametrize(
    ("endpoint", "body", "field"),
    [
        ("flux-2-pro", {"width": 100, "height": 128}, "width"),
        ("flux-2-pro", {"width": 128}, "height"),
        ("flux-2-pro", {"width": 4096, "height": 2048}, "width"),
        ("flux-2-pro", {"safety_tolerance": 6}, "safety_tolerance"),
        ("flux-2-flex", {"guidance": 11}, "guidance"),
        ("flux-2-flex", {"steps": 51}, "steps"),
        ("flux-2-klein-4b", references(5), "input_image_5"),
        ("flux-2-pro", {"input_image": b64(image_bytes((32, 64)))}, "input_image"),
        ("flux-2-pro", {"input_image_2": "http://127.0.0.1:9/private.png"}, "input_image_2"),
        ("flux-2-pro", {"input_image": "not an image"}, "input_image"),
        ("flux-2-pro", {"prompt": ""}, "prompt"),
    ],
)
def test_bad_bfl_flux2_fields_are_422_naming_the_field_and_nothing_is_queued(
    client, endpoint, body, field
):
    before = job_count(client)
    response = client.post(f"/v1/{endpoint}", json={"prompt": PROMPT, **body})
    assert response.status_code == 422, response.text
    assert field in [str(part) for part in response.json()["detail"][0]["loc"]], response.text
    assert job_count(client) == before


def test_more_references_than_the_serving_model_takes_is_a_422(tiny_flux2_dir, tmp_path):
    """flux-2-pro served by a [klein] model (no [dev] loaded) takes its 4, not BFL's 8."""
    settings = Settings(model=[str(tiny_flux2_dir)], data_dir=tmp_path, worker_mode="thread")
    for test_client in running_app(settings):
        response = test_client.post("/v1/flux-2-pro", json={"prompt": PROMPT, **references(5)})
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"][-1] == "input_image_5"
        assert job_count(test_client) == 0


# fal


def fal_run(client: TestClient, endpoint: str, body: dict) -> dict:
    response = client.post(f"/{endpoint}", json={"prompt": PROMPT, "seed": 3, **body})
    assert response.status_code == 200, response.text
    return response.json()


def image_urls(count: int) -> list[str]:
    return [data_uri(image_bytes((96 + 16 * i, 64))) for i in range(count)]


@pytest.mark.parametrize(
    ("endpoint", "most"),
    [("fal-ai/flux-2/edit", 8), ("fal-ai/flux-2-pro/edit", 8), ("fal-ai/flux-2-flex/edit", 8),
     ("fal-ai/flux-2-max/edit", 8), ("fal-ai/flux-2/klein/4b/edit", 4),
     ("fal-ai/flux-2/klein/9b/base/edit", 4)],
)  # fmt: skip
def test_fal_flux2_edit_ids(client, endpoint, most):
    steps = {} if "pro" in endpoint or "max" in endpoint else {"num_inference_steps": 2}
    for count in (1, 3, most):
        output = fal_run(client, endpoint, {"image_urls": image_urls(count), **steps})
        (image,) = output["images"]
        assert (image["width"], image["height"]) == (96, 64)  # image_size auto
        downloaded = fetch_image(client, image["url"])
        assert downloaded.size == (96, 64)
    response = client.post(
        f"/{endpoint}", json={"prompt": PROMPT, "image_urls": image_urls(most + 1)}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "image_urls"]


@pytest.mark.parametrize(
    "endpoint",
    ["fal-ai/flux-2", "fal-ai/flux-2-pro", "fal-ai/flux-2-flex", "fal-ai/flux-2-max",
     "fal-ai/flux-2/klein/4b", "fal-ai/flux-2/klein/9b/base"],
)  # fmt: skip
def test_fal_flux2_text_to_image_ids(client, endpoint):
    output = fal_run(client, endpoint, {"image_size": "square", "num_images": 2})
    assert [(i["width"], i["height"]) for i in output["images"]] == [(512, 512)] * 2
    output = fal_run(client, endpoint, {"image_size": {"width": 128, "height": 64}})
    assert (output["images"][0]["width"], output["images"][0]["height"]) == (128, 64)


def test_fal_flux2_queue_and_validation(client):
    body = {"prompt": PROMPT, "image_urls": image_urls(2)}
    submitted = client.post("/queue/fal-ai/flux-2-pro/edit", json=body).json()
    assert submitted["status_url"].endswith(
        f"/queue/fal-ai/flux-2-pro/requests/{submitted['request_id']}/status"
    )
    for _ in range(600):
        status = client.get(submitted["status_url"]).json()["status"]
        if status == "COMPLETED":
            break
    result = client.get(submitted["response_url"]).json()
    assert (result["images"][0]["width"], result["images"][0]["height"]) == (96, 64)
    before = job_count(client)
    for body, field in (({"safety_tolerance": "6"}, "safety_tolerance"),
                        ({"image_size": "huge"}, "image_size"),
                        ({"image_urls": ["http://10.0.0.1/x.png"]}, "image_urls")):  # fmt: skip
        body = {"prompt": PROMPT, "image_urls": image_urls(1), **body}
        response = client.post("/fal-ai/flux-2-pro/edit", json=body)
        assert response.status_code == 422, response.text
        loc = response.json()["detail"][0]["loc"]
        assert loc[1].startswith(field), response.text
    assert job_count(client) == before


# OpenAI


def test_openai_generates_and_edits_on_flux2(client):
    body = {"prompt": PROMPT, "model": "tiny-flux2", "size": "512x256"}
    response = client.post("/v1/images/generations", json=body)
    assert response.status_code == 200, response.text
    assert fetch_image(client, response.json()["data"][0]["url"]).size == (512, 256)
    files = [("image[]", (f"{i}.png", image_bytes((96 + 16 * i, 64)), "image/png"))
             for i in range(8)]  # fmt: skip
    response = client.post("/v1/images/edits", data={"prompt": PROMPT, "model": "tiny-flux2-dev"},
                           files=files)  # fmt: skip
    assert response.status_code == 200, response.text
    assert fetch_image(client, response.json()["data"][0]["url"]).size == (96, 64)
    job = newest_job(client)
    assert job.request.task is Task.EDIT
    assert len(job.request.input_sizes) == 8
    before = job_count(client)
    response = client.post("/v1/images/edits", data={"prompt": PROMPT, "model": "tiny-flux2"},
                           files=files[:5])  # fmt: skip
    assert_openai_error(response, 400, "image[4]", "invalid_request")
    assert job_count(client) == before


def test_images_download_in_the_requested_format(client):
    response = client.post("/v1/flux-2-klein-4b", json={"prompt": PROMPT, "output_format": "png",
                                                          "width": 64, "height": 64})  # fmt: skip
    result = poll_result(client, response.json()["id"])
    data = client.get(result["result"]["sample"]).content
    assert Image.open(io.BytesIO(data)).format == "PNG"


def test_cancel_stops_a_flux2_job_between_steps(flux2_runners):
    from fluxserve.errors import GenerationCancelled

    steps: list[int] = []
    with pytest.raises(GenerationCancelled):
        flux2_runners[0].generate(
            _request("tiny-flux2-dev", seed=1, steps=4), GenerationInputs(),
            lambda done, total: steps.append(done), lambda: bool(steps),
        )  # fmt: skip
    assert steps == [1]  # progress was reported, and the loop stopped after the first step


def test_warm_up_runs_on_flux2(flux2_runners):
    flux2_runners[0].warm_up([(64, 64)])  # every model, its own guidance (none on [klein])


def test_safety_provenance_and_webhook_fields_apply_to_flux2(client):
    """The shared checks run on FLUX.2 jobs: a refused prompt is Request Moderated (with
    its verdict), and a result carries its generation metadata."""
    response = client.post("/v1/flux-2-klein-4b", json={"prompt": "csam", "width": 64,
                                                          "height": 64})  # fmt: skip
    result = poll_result(client, response.json()["id"])
    assert result["status"] == "Request Moderated"
    assert result["details"]["verdicts"]
    body = {"prompt": PROMPT, "width": 64, "height": 64, "output_format": "png", "seed": 9}
    response = client.post("/v1/flux-2-pro", json=body)
    sample = poll_result(client, response.json()["id"])["result"]["sample"]
    info = Image.open(io.BytesIO(client.get(sample).content)).info
    assert "tiny-flux2-dev" in json.dumps(info, default=str)
    assert "9" in json.dumps(info, default=str)
    bad_hook = {"prompt": PROMPT, "webhook_url": "ftp://example.com/hook"}
    assert client.post("/v1/flux-2-pro", json=bad_hook).status_code == 422


def test_fal_kontext_ids_run_on_flux2_when_no_kontext_model_is_loaded(client):
    body = {"image_urls": image_urls(2)}
    (image,) = fal_run(client, "fal-ai/flux-pro/kontext/multi", body)["images"]
    assert image["width"] > image["height"]  # the first reference's shape
    assert newest_job(client).request.input_sizes == ((96, 64), (112, 64))
