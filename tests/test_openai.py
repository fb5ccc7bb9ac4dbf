"""The OpenAI Images dialect through the app, as raw HTTP (api-compat.md §3).

``POST /v1/images/generations`` answers only once its images exist, so on an app without a
worker (``idle_client``, no lifespan) it would wait. ``post_idle`` sends it from a thread,
reads the job it stored, then cancels that job so the call returns: that is how the tests
check what a request turns into (size, extras, model) without generating anything, and how
rejections are checked without risking a wait if one were wrongly accepted. Images really
generated go through ``client`` (a thread worker on the tiny model) at 256x256, one step.
"""

from __future__ import annotations

import base64
import io
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fluxserve.api.app import create_app
from fluxserve.config import Settings
from fluxserve.domain import MAX_SEED, GenerationRequest, Job, OutputFormat
from tests.helpers import assert_openai_error, idle_app, job_ids, only_job

URL = "/v1/images/generations"
FAST = {"size": "256x256", "steps": 1}


@pytest.fixture(scope="session")
def second_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny model under another name (a model's name is its directory's)."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("more") / "tiny-b"))


@pytest.fixture
def two_models(tmp_path: Path, tiny_model_dir: Path, second_model_dir: Path):
    """An idle app loading tiny-b first, then tiny, with the alias house=tiny."""
    settings = Settings(
        model=[str(second_model_dir), str(tiny_model_dir)],
        alias=["house=tiny"],
        data_dir=tmp_path / "data2",
        worker_mode="thread",
    )
    yield from idle_app(settings)


# -- helpers --------------------------------------------------------------------------------


def post_idle(client: TestClient, body, **kwargs) -> tuple[Job | None, httpx.Response]:
    """POST a generation to an app with no worker: (the job it stored, or None, and the
    response). A stored job is cancelled once read, which ends the call."""
    services = client.app.state.services
    before = job_ids(client)
    outcome: dict[str, httpx.Response] = {}

    def call() -> None:
        outcome["response"] = client.post(URL, json=body, **kwargs)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    job = None
    while time.monotonic() < deadline:
        finished = not thread.is_alive()
        new = job_ids(client) - before
        if new:
            (job_id,) = new
            job = services.jobs.get(job_id)
            services.jobs.cancel(job_id)
            break
        if finished:
            break
        time.sleep(0.005)
    thread.join(30)
    assert not thread.is_alive(), "the request did not return"
    return job, outcome["response"]


def stored_request(client: TestClient, body, **kwargs) -> GenerationRequest:
    job, response = post_idle(client, body, **kwargs)
    assert job is not None, (body, response.status_code, response.text)
    return job.request


def generate(client: TestClient, body: dict, **kwargs) -> dict:
    response = client.post(URL, json=body, **kwargs)
    assert response.status_code == 200, (body, response.text)
    assert response.headers["content-type"] == "application/json"
    return response.json()


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
    image.load()
    return image


# -- GET /v1/models --------------------------------------------------------------------------


def test_models_list(idle_client):
    response = idle_client.get("/v1/models")
    assert response.status_code == 200
    created = int(idle_client.app.state.services.started_at)
    assert response.json() == {
        "object": "list",
        "data": [{"id": "tiny", "object": "model", "created": created, "owned_by": "fluxserve"}],
    }


def test_models_list_in_load_order(two_models):
    response = two_models.get("/v1/models", headers={"Authorization": "Bearer x"})
    assert response.status_code == 200
    assert [m["id"] for m in response.json()["data"]] == ["tiny-b", "tiny"]


# -- generation ------------------------------------------------------------------------------


def test_b64_json(client):
    before = int(time.time())
    body = generate(client, {"prompt": "a red fox", "n": 2, "response_format": "b64_json", **FAST})
    assert set(body) == {"created", "data", "output_format"}
    assert type(body["created"]) is int
    assert body["created"] >= before
    assert body["created"] == int(only_job(client).finished_at)
    assert body["output_format"] == "png"
    assert len(body["data"]) == 2
    raw = []
    for item in body["data"]:
        assert set(item) == {"b64_json", "revised_prompt"}, item.keys()
        assert item["revised_prompt"] == "a red fox"
        image = decode(item["b64_json"])
        assert image.format == "PNG"
        assert image.size == (256, 256)
        raw.append(item["b64_json"])
    assert raw[0] != raw[1]  # a batch of two images, not one twice


def test_url(client):
    body = generate(client, {"prompt": "linked", "size": "512x256", "steps": 1})
    (item,) = body["data"]
    assert set(item) == {"url", "revised_prompt"}
    assert item["revised_prompt"] == "linked"
    assert item["url"].startswith("http://testserver/files/results/")
    response = client.get(item["url"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG"
    assert image.size == (512, 256)


@pytest.mark.parametrize(
    ("output_format", "pil_format"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")]
)
def test_output_formats(client, output_format, pil_format):
    body = generate(
        client,
        {"prompt": "f", "output_format": output_format, "response_format": "b64_json", **FAST},
    )
    assert body["output_format"] == output_format
    image = decode(body["data"][0]["b64_json"])
    assert image.format == pil_format
    assert image.size == (256, 256)

    linked = generate(client, {"prompt": "f", "output_format": output_format, **FAST})
    response = client.get(linked["data"][0]["url"])
    assert response.status_code == 200
    assert response.headers["content-type"] == f"image/{output_format}"
    assert Image.open(io.BytesIO(response.content)).format == pil_format


def test_same_seed_same_bytes(client):
    request = {"prompt": "seeded", "seed": 9, "response_format": "b64_json", **FAST}
    first = generate(client, request)["data"][0]["b64_json"]
    assert generate(client, request)["data"][0]["b64_json"] == first
    other = generate(client, {**request, "seed": 10})["data"][0]["b64_json"]
    assert other != first


def test_bearer_and_unknown_fields_accepted(client):
    body = generate(
        client,
        {
            "prompt": "extras",
            "quality": "hd",
            "style": "vivid",
            "user": "user-1",
            "moderation": "low",
            "background": "opaque",
            "output_compression": 80,
            "partial_images": 0,
            "stream": False,
            "response_format": "b64_json",
            "made_up": {"nested": [1, 2]},
            "another": None,
            **FAST,
        },
        headers={"Authorization": "Bearer x"},
    )
    assert len(body["data"]) == 1
    assert decode(body["data"][0]["b64_json"]).size == (256, 256)


# -- what a request becomes (stored, on an app without a worker) ----------------------------


def test_defaults_stored(idle_client):
    request = stored_request(idle_client, {"prompt": "plain"})
    assert request.model == "tiny"
    assert request.endpoint == "openai"
    assert request.prompt == "plain"
    assert (request.width, request.height) == (1024, 1024)
    assert request.num_images == 1
    assert request.output_format is OutputFormat.PNG
    assert request.steps == 4  # the tiny model's default
    assert request.guidance == 3.0
    assert 0 <= request.seed <= MAX_SEED


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ("auto", (1024, 1024)),
        ("512x256", (512, 256)),
        ("256x2048", (256, 2048)),
        ("2048x272", (2048, 272)),
    ],
)
def test_size_stored(idle_client, size, expected):
    request = stored_request(idle_client, {"prompt": "s", "size": size})
    assert (request.width, request.height) == expected


def test_extras_stored(idle_client):
    body = {
        "prompt": "x",
        "seed": 123,
        "steps": 3,
        "guidance": 2.5,
        "n": 3,
        "output_format": "webp",
    }
    request = stored_request(idle_client, body, headers={"Authorization": "Bearer x"})
    assert request.seed == 123
    assert request.steps == 3
    assert request.guidance == 2.5
    assert request.num_images == 3
    assert request.output_format is OutputFormat.WEBP


@pytest.mark.parametrize(
    "extras",
    [
        {"seed": 0, "steps": 1, "guidance": 1.5, "n": 1},
        {"seed": MAX_SEED, "steps": 50, "guidance": 5.0, "n": 10},
        {"seed": None, "steps": None, "guidance": None, "model": None},
    ],
    ids=["low", "high", "nulls"],
)
def test_boundary_values_accepted(idle_client, extras):
    request = stored_request(idle_client, {"prompt": "b", **extras})
    for name, field in [("seed", "seed"), ("steps", "steps"), ("guidance", "guidance")]:
        if extras.get(name) is not None:
            assert getattr(request, field) == extras[name]
    if "n" in extras:
        assert request.num_images == extras["n"]


def test_unknown_fields_stored_request(idle_client):
    body = {"prompt": "u", "size": "256x512", "aspect_ratio": "16:9", "width": 999, "extra": [1]}
    request = stored_request(idle_client, body)
    assert (request.width, request.height) == (256, 512)


@pytest.mark.parametrize(
    "model",
    ["tiny", "flux-dev", "flux-schnell", "flux-pro-1.1", "flux-pro", "fal-ai/flux/dev", None],
)
def test_model_names_resolve(idle_client, model):
    body = {"prompt": "m"} if model is None else {"prompt": "m", "model": model}
    assert stored_request(idle_client, body).model == "tiny"


def test_model_by_its_source_path(idle_client, tiny_model_dir):
    request = stored_request(idle_client, {"prompt": "m", "model": str(tiny_model_dir.resolve())})
    assert request.model == "tiny"


def test_model_resolution_with_two_models(two_models):
    assert stored_request(two_models, {"prompt": "m"}).model == "tiny-b"  # the first loaded
    assert stored_request(two_models, {"prompt": "m", "model": "tiny"}).model == "tiny"
    assert stored_request(two_models, {"prompt": "m", "model": "tiny-b"}).model == "tiny-b"
    assert stored_request(two_models, {"prompt": "m", "model": "house"}).model == "tiny"  # alias

    job, response = post_idle(two_models, {"prompt": "m", "model": "dall-e-3"})
    assert job is None
    message = assert_openai_error(response, 400, "model", "invalid_request")
    assert "dall-e-3" in message
    assert "tiny-b, tiny" in message


def test_unknown_model(idle_client):
    job, response = post_idle(idle_client, {"prompt": "m", "model": "dall-e-3"})
    assert job is None
    message = assert_openai_error(response, 400, "model", "invalid_request")
    assert "'dall-e-3'" in message
    assert "tiny" in message


# -- validation: 400 in OpenAI's shape, naming the parameter, no job ------------------------

INVALID = [
    # (name, body, param, code)
    ("prompt-missing", {}, "prompt", "missing"),
    ("prompt-empty", {"prompt": ""}, "prompt", "string_too_short"),
    ("prompt-null", {"prompt": None}, "prompt", "string_type"),
    ("prompt-number", {"prompt": 5}, "prompt", "string_type"),
    # A prompt past --max-prompt-chars: tests/test_prompt_limits.py, with every dialect's.
    ("n-0", {"n": 0}, "n", "greater_than_equal"),
    ("n-101", {"n": 101}, "n", "less_than_equal"),
    ("n-bool", {"n": True}, "n", "number_type"),
    ("n-text", {"n": "two"}, "n", "int_parsing"),
    ("size-250x256", {"size": "250x256"}, "size", "size_value"),
    ("size-256x250", {"size": "256x250"}, "size", "size_value"),
    ("size-240x240", {"size": "240x240"}, "size", "size_value"),
    ("size-4096x4096", {"size": "4096x4096"}, "size", "size_value"),
    ("size-big", {"size": "big"}, "size", "size_format"),
    ("size-upper-x", {"size": "256X256"}, "size", "size_format"),
    ("size-one-side", {"size": "256x"}, "size", "size_format"),
    ("size-negative", {"size": "-256x256"}, "size", "size_format"),
    ("size-int", {"size": 256}, "size", "string_type"),
    ("response_format-xml", {"response_format": "xml"}, "response_format", "literal_error"),
    ("output_format-gif", {"output_format": "gif"}, "output_format", "literal_error"),
    ("background-transparent", {"background": "transparent"}, "background", "literal_error"),
    ("stream-true", {"stream": True}, "stream", "literal_error"),
    ("partial_images-2", {"partial_images": 2}, "partial_images", "less_than_equal"),
    ("quality-ultra", {"quality": "ultra"}, "quality", "literal_error"),
    (
        "output_compression-101",
        {"output_compression": 101},
        "output_compression",
        "less_than_equal",
    ),
    ("steps-60", {"steps": 60}, "steps", "less_than_equal"),
    ("steps-0", {"steps": 0}, "steps", "greater_than_equal"),
    ("steps-bool", {"steps": True}, "steps", "number_type"),
    ("guidance-11", {"guidance": 11}, "guidance", "less_than_equal"),
    ("guidance-1", {"guidance": 1}, "guidance", "greater_than_equal"),
    ("guidance-bool", {"guidance": False}, "guidance", "number_type"),
    ("seed-minus-1", {"seed": -1}, "seed", "greater_than_equal"),
    ("seed-2**64", {"seed": 2**64}, "seed", "less_than_equal"),
    ("seed-bool", {"seed": True}, "seed", "number_type"),
    ("model-number", {"model": 3}, "model", "string_type"),
]


@pytest.mark.parametrize(
    ("body", "param", "code"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID]
)
def test_invalid_parameter(idle_client, body, param, code):
    request = {"prompt": "x", **body} if "prompt" not in body and param != "prompt" else body
    job, response = post_idle(idle_client, request)
    assert job is None
    message = assert_openai_error(response, 400, param, code)
    assert message.startswith(f"{param}: ")
    assert job_ids(idle_client) == set()


def test_prompt_lone_surrogate(idle_client):
    response = idle_client.post(
        URL,
        content=b'{"prompt": "fox \\ud800"}',
        headers={"content-type": "application/json"},
    )
    message = assert_openai_error(response, 400, "prompt", "string_unicode")
    assert "unicode" in message.lower()
    assert job_ids(idle_client) == set()


def test_every_invalid_parameter_in_the_message(idle_client):
    job, response = post_idle(idle_client, {"n": 0, "size": "big", "seed": -1})
    assert job is None
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "prompt"  # the first one
    for name in ("prompt: ", "n: ", "size: ", "seed: "):
        assert name in error["message"]


def test_body_not_an_object(idle_client):
    for body in (["x"], "a fox", 3):
        job, response = post_idle(idle_client, body)
        assert job is None
        assert response.status_code == 400
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert job_ids(idle_client) == set()


def test_size_with_non_ascii_digits_is_a_clear_400(idle_openai_client_for_regressions):
    response = idle_openai_client_for_regressions.post(
        "/v1/images/generations", json={"prompt": "x", "size": "²56x256"}
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("size", "size_format")


def test_malformed_json_names_no_parameter(idle_openai_client_for_regressions):
    response = idle_openai_client_for_regressions.post(
        "/v1/images/generations",
        content='{"prompt": "x"',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] is None
    assert error["message"].startswith("Invalid JSON body")


@pytest.fixture
def idle_openai_client_for_regressions(settings):
    from fastapi.testclient import TestClient

    return TestClient(create_app(settings))  # no lifespan: nothing is generated
