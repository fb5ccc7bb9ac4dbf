"""Issue 15: Ultra and raw, FLUX.1 Krea [dev], and the request fields as the reference
documents describe them (guidance 1.5-10, num_images up to --max-images-per-request,
Kontext's ``image``/``steps``/``guidance``, input_mp, bodies that are not JSON, credits).

Against the tiny models: a "megapixel" is a model's native area (256x256 for them), so
Ultra's 4 MP on tiny-flux2 is 4 x 256 x 256 pixels, as it is 4 x 1024 x 1024 on FLUX.2.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fluxserve.config import Settings
from fluxserve.jobs.routing import ModelRouter
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
TINY_AREA = 256 * 256  # the tiny models' native "megapixel"
ULTRA = "/v1/flux-pro-1.1-ultra"
KONTEXT = "/v1/flux-kontext-pro"


@pytest.fixture(scope="module")
def flux1(tiny_model_dir, tiny_kontext_dir, tmp_path_factory) -> Iterator[TestClient]:
    """FLUX.1 only: tiny (text-to-image) and tiny-kontext."""
    models = [str(tiny_model_dir), str(tiny_kontext_dir)]
    data = tmp_path_factory.mktemp("flux1")
    settings = Settings(model=models, data_dir=data, worker_mode="thread")
    yield from running_app(settings)


@pytest.fixture(scope="module")
def flux2(tiny_flux2_dir, tmp_path_factory) -> Iterator[TestClient]:
    settings = Settings(model=[str(tiny_flux2_dir)], data_dir=tmp_path_factory.mktemp("flux2"),
                        worker_mode="thread")  # fmt: skip
    yield from running_app(settings)


def ready(client: TestClient, path: str, body: dict) -> tuple[dict, dict, Image.Image]:
    """Submit, poll to Ready; the submit answer, the result and the image."""
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    result = poll_result(client, response.json()["id"], timeout=120)
    assert result["status"] == "Ready", result
    return response.json(), result, fetch_image(client, result["result"]["sample"])


def job_of(client: TestClient, job_id: str):
    return client.app.state.services.store.get(job_id)


# -- Ultra and raw ---------------------------------------------------------------------------


def test_the_founding_request_as_written_on_flux1(flux1):
    body = {"prompt": PROMPT, "aspect_ratio": "21:9", "raw": True, "guidance": 7, "seed": 4}
    submitted, result, image = ready(flux1, ULTRA, body)
    width, height = image.size
    assert width / height == pytest.approx(21 / 9, rel=0.05)
    assert width * height == pytest.approx(2 * TINY_AREA, rel=0.1)  # --ultra-megapixels 2
    notes = result["details"]["notes"]
    assert any("FLUX.1 model, not 4 MP" in note for note in notes), notes
    assert any(note.startswith("raw: no FLUX.1 Krea") for note in notes), notes
    assert job_of(flux1, submitted["id"]).request.guidance == 7  # honoured, not dropped


def test_ultra_on_flux2_makes_about_4_mp(flux2):
    _, result, image = ready(flux2, ULTRA, {"prompt": PROMPT, "aspect_ratio": "9:16"})
    width, height = image.size
    assert width / height == pytest.approx(9 / 16, rel=0.05)
    assert width * height == pytest.approx(4 * TINY_AREA, rel=0.1)
    assert any("natively on tiny-flux2" in n for n in result["details"]["notes"])


def test_ultra_image_prompt(flux1, flux2):
    body = {"prompt": PROMPT, "aspect_ratio": "1:1", "image_prompt": b64(image_bytes((96, 64))),
            "image_prompt_strength": 0.3, "seed": 2}  # fmt: skip
    submitted, _, image = ready(flux1, ULTRA, body)
    job = job_of(flux1, submitted["id"])
    assert job.request.task.value == "image-to-image"
    assert job.request.strength == pytest.approx(0.7)  # 1 - image_prompt_strength
    assert submitted["input_mp"] > 0
    _, plain, _ = ready(flux1, ULTRA, {**body, "image_prompt": None})
    assert image.tobytes() != fetch_image(flux1, plain["result"]["sample"]).tobytes()
    submitted, result, _ = ready(flux2, ULTRA, body)  # FLUX.2: a reference, with a note
    assert job_of(flux2, submitted["id"]).request.task.value == "edit"
    assert any("image_prompt_strength is not used" in n for n in result["details"]["notes"])


def test_raw_goes_to_krea_when_it_is_loaded(tiny_model_dir, tmp_path):
    specs = {name: MODEL_SPECS[name] for name in ("flux-dev", "flux-krea-dev", "flux2-dev")}
    router = ModelRouter(specs)
    assert router.route("flux-pro-1.1-ultra").name == "flux2-dev"  # 4 MP natively
    assert router.route("flux-pro-1.1-ultra", raw=True).name == "flux-krea-dev"
    assert router.route("fal-ai/flux/krea").name == "flux-krea-dev"
    assert router.route("flux-dev").name == "flux-dev"  # Krea does not take [dev]'s routes
    no_flux2 = ModelRouter({k: v for k, v in specs.items() if k != "flux2-dev"})
    assert no_flux2.route("fal-ai/flux-pro/v1.1-ultra").name == "flux-dev"
    # A local Krea directory (here the tiny weights without their marker) is a Krea model.
    krea_dir = tmp_path / "my-krea"
    shutil.copytree(tiny_model_dir, krea_dir)
    (krea_dir / "fluxserve_tiny.json").unlink()
    assert infer_spec("my-krea", krea_dir).kind is ModelKind.KREA
    # Its weights count as real: the classifiers that real weights switch on are not here.
    settings = Settings(model=[str(tiny_model_dir), str(krea_dir)], data_dir=tmp_path / "d",
                        worker_mode="thread", image_checker="off")  # fmt: skip
    for client in running_app(settings):
        submitted, result, _ = ready(client, ULTRA, {"prompt": PROMPT, "raw": True})
        assert job_of(client, submitted["id"]).request.model == "my-krea"
        assert not any(n.startswith("raw:") for n in result["details"]["notes"])
        output = client.post("/fal-ai/flux/krea", json={"prompt": PROMPT, "image_size": "square",
                                                        "num_inference_steps": 2})  # fmt: skip
        assert output.status_code == 200, output.text


def test_fal_ultra_and_krea_ids(flux1):
    body = {"prompt": PROMPT, "aspect_ratio": "9:16", "raw": True, "num_images": 2,
            "image_url": data_uri(image_bytes((64, 96))), "image_prompt_strength": 0.5}  # fmt: skip
    output = flux1.post("/fal-ai/flux-pro/v1.1-ultra", json=body).json()
    sizes = {(i["width"], i["height"]) for i in output["images"]}
    assert len(output["images"]) == 2
    ((width, height),) = sizes
    assert width / height == pytest.approx(9 / 16, rel=0.05)
    for endpoint in ("fal-ai/flux/krea", "fal-ai/flux-1/krea"):  # tiny stands in for Krea
        response = flux1.post(f"/{endpoint}", json={"prompt": PROMPT, "image_size": "square",
                                                    "num_inference_steps": 2})  # fmt: skip
        assert response.status_code == 200, response.text
    i2i = {"prompt": PROMPT, "image_url": data_uri(image_bytes()), "num_inference_steps": 4}
    assert flux1.post("/fal-ai/flux/krea/image-to-image", json=i2i).status_code == 200


# -- the documented ranges --------------------------------------------------------------------


def test_guidance_up_to_10_on_bfl(flux1):
    body = {"prompt": PROMPT, "width": 256, "height": 256, "steps": 2, "guidance": 7}
    submitted, _, _ = ready(flux1, "/v1/flux-dev", body)
    assert job_of(flux1, submitted["id"]).request.guidance == 7


def test_fals_example_asks_for_5_images(flux1):
    body = {"prompt": PROMPT, "num_images": 5, "image_size": "square", "num_inference_steps": 2}
    response = flux1.post("/fal-ai/flux/dev", json=body)
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 5


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/flux-dev", {"guidance": 10.5}, "guidance"),
        ("/v1/flux-dev", {"guidance": 1.4}, "guidance"),
        (KONTEXT, {"steps": 51}, "steps"),
        (KONTEXT, {"guidance": 11}, "guidance"),
        (KONTEXT, {"input_image": b64(image_bytes()), "image": b64(image_bytes())}, "image"),
        (ULTRA, {"aspect_ratio": "22:9"}, "aspect_ratio"),
        (ULTRA, {"aspect_ratio": "wide"}, "aspect_ratio"),
        (ULTRA, {"image_prompt_strength": 1.5}, "image_prompt_strength"),
        # All of the image kept leaves no step to denoise.
        (ULTRA, {"image_prompt": b64(image_bytes()), "image_prompt_strength": 1},
         "image_prompt_strength"),
        (ULTRA, {"safety_tolerance": 7}, "safety_tolerance"),
        ("/fal-ai/flux/dev", {"num_images": 11}, "num_images"),
        ("/fal-ai/flux-pro/v1.1-ultra", {"aspect_ratio": "5:1"}, "aspect_ratio"),
    ],
)  # fmt: skip
def test_out_of_range_is_422_naming_the_field_and_nothing_is_queued(flux1, path, body, field):
    before = job_count(flux1)
    response = flux1.post(path, json={"prompt": PROMPT, **body})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][-1] == field, response.text
    assert job_count(flux1) == before


def test_one_image_limit_for_every_dialect(tiny_model_dir, tmp_path):
    settings = Settings(model=[str(tiny_model_dir)], data_dir=tmp_path, worker_mode="thread",
                        max_images_per_request=3)  # fmt: skip
    for client in running_app(settings):
        fal = client.post("/fal-ai/flux/dev", json={"prompt": PROMPT, "num_images": 4})
        assert fal.status_code == 422
        assert fal.json()["detail"][0]["loc"] == ["body", "num_images"]
        openai = client.post("/v1/images/generations", json={"prompt": PROMPT, "n": 4})
        assert_openai_error(openai, 400, "n", "invalid_request")
        assert job_count(client) == 0
        three = {"prompt": PROMPT, "n": 3, "size": "256x256", "steps": 1}
        ok = client.post("/v1/images/generations", json=three)
        assert ok.status_code == 200, ok.text
        assert len(ok.json()["data"]) == 3


# -- Kontext as documented ----------------------------------------------------------------------


def test_the_kontext_edit_request_as_documented(flux1):
    picture = b64(image_bytes((96, 64)))
    body = {"prompt": "make it night", "image": picture, "steps": 2, "guidance": 6, "seed": 8}
    submitted, _, edited = ready(flux1, KONTEXT, body)
    assert submitted["input_mp"] > 0
    job = job_of(flux1, submitted["id"])
    assert (job.request.steps, job.request.guidance) == (2, 6)
    _, _, without = ready(flux1, KONTEXT, {**body, "image": None})
    assert edited.tobytes() != without.tobytes()  # the image is read, not dropped
    _, _, more_steps = ready(flux1, KONTEXT, {**body, "steps": 6})
    assert edited.tobytes() != more_steps.tobytes()  # steps are honoured
    _, _, as_input_image = ready(flux1, KONTEXT, {**body, "image": None, "input_image": picture})
    assert edited.tobytes() == as_input_image.tobytes()  # the same image by either name


# -- bodies that are not JSON ------------------------------------------------------------------


@pytest.mark.parametrize("body", [b'\xff\xfe{"prompt": "x"}', b'{"prompt": "x"'])
def test_a_body_that_is_not_json_is_a_422_naming_the_body(flux1, body):
    headers = {"content-type": "application/json"}
    for path in ("/v1/flux-dev", "/fal-ai/flux/dev", ULTRA):
        response = flux1.post(path, content=body, headers=headers)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"][0]
        assert (detail["type"], detail["loc"][0]) == ("json_invalid", "body")
    openai = flux1.post("/v1/images/generations", content=body, headers=headers)
    assert openai.status_code == 400  # OpenAI's shape for a bad request
    assert openai.json()["error"]["code"] == "json_invalid"


# -- credits -----------------------------------------------------------------------------------


def test_credits_are_spent_at_the_price_table_and_a_402_stops_an_overdraft(
    tiny_model_dir, tmp_path
):
    from fluxserve.jobs.access import KeyRing
    from fluxserve.store.keys import KeyStore
    from fluxserve.store.opening import open_store

    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"*": {"first_mp": 2}, "flux-dev": {"first_mp": 3}}))
    settings = Settings(model=[str(tiny_model_dir)], data_dir=tmp_path / "data", auth="required",
                        worker_mode="thread", price_table=prices)  # fmt: skip
    settings.data_dir.mkdir()
    store = open_store(settings)
    ring = KeyRing(KeyStore(store.engine))
    _, budget = ring.create("budget", credits=5)
    _, unlimited = ring.create("unlimited")
    store.close()
    body = {"prompt": PROMPT, "width": 256, "height": 256, "steps": 1}
    for client in running_app(settings):
        headers = {"x-key": budget}
        assert client.get("/v1/credits", headers=headers).json() == {"credits": 5.0}
        first = client.post("/v1/flux-dev", json=body, headers=headers)
        assert first.json()["cost"] == 3.0
        assert client.get("/v1/credits", headers=headers).json() == {"credits": 2.0}
        refused = client.post("/v1/flux-dev", json=body, headers=headers)
        assert refused.status_code == 402
        assert "3 credits" in refused.json()["detail"]
        fal = client.post("/fal-ai/flux/dev", json={"prompt": PROMPT}, headers=headers)
        assert fal.status_code == 200  # "*": 2 credits, exactly what is left
        assert client.get("/v1/credits", headers=headers).json() == {"credits": 0.0}
        fal = client.post("/fal-ai/flux/dev", json={"prompt": PROMPT}, headers=headers)
        assert (fal.status_code, fal.json()["error_type"]) == (402, "insufficient_credits")
        assert job_count(client) == 2
        free = {"x-key": unlimited}
        assert client.get("/v1/credits", headers=free).json() == {"credits": None}
        assert client.post("/v1/flux-dev", json=body, headers=free).status_code == 200


def test_keys_create_with_credits_from_the_command_line(tmp_path):
    from tests.test_cli import run

    created = run("keys", "create", "--name", "paid", "--credits", "12.5",
                  "--data-dir", str(tmp_path))  # fmt: skip
    assert created.returncode == 0, created.stderr
    listing = run("keys", "list", "--data-dir", str(tmp_path))
    assert "12.5 of 12.5 credits left" in listing.stdout
    refused = run("keys", "create", "--name", "bad", "--credits", "-1", "--data-dir", str(tmp_path))
    assert refused.returncode == 2
