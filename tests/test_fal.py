"""The fal dialect through the app (api-compat.md §2): sync runs, the queue, validation.

Rejections go through ``client`` (the app with a real thread worker on the tiny model), so a
request wrongly accepted fails fast instead of waiting on a queue no worker serves; they must
answer FastAPI's 422 shape naming the field, without creating a job. Acceptances that need
no image go through ``idle_client`` (the same app without its lifespan, so no worker runs):
their jobs stay queued and the tests read the stored request. Images really generated are
256x256 with one step, except the long jobs (1024x1024, 50 steps) that the progress and
cancel tests stop early.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import time

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from PIL import Image

from fluxserve.api.fal.convert import to_generation_request
from fluxserve.api.fal.protocol import FluxInput
from fluxserve.config import Settings
from fluxserve.domain import MAX_SEED, GenerationRequest, Job, JobStatus, OutputFormat
from fluxserve.errors import InvalidRequest
from fluxserve.specs import MODEL_SPECS
from fluxserve.store.tables import jobs
from tests.helpers import job_count

BASE = "http://testserver"
# endpoint id -> app id (owner/alias), under which status, result and cancel live.
ENDPOINTS = {
    "fal-ai/flux/schnell": "fal-ai/flux",
    "fal-ai/flux/dev": "fal-ai/flux",
    "fal-ai/flux-1/schnell": "fal-ai/flux-1",
    "fal-ai/flux-1/dev": "fal-ai/flux-1",
    "fal-ai/flux-pro/v1.1": "fal-ai/flux-pro",
}
# The endpoints whose input has num_inference_steps and guidance_scale.
STEPS_ENDPOINTS = [e for e in ENDPOINTS if not e.startswith("fal-ai/flux-pro/")]
SMALL = {"image_size": {"width": 256, "height": 256}}
FAST = {**SMALL, "num_inference_steps": 1}
# A job that runs for several seconds on CPU: the progress and cancel tests stop it early.
LONG = {"image_size": "square_hd", "num_inference_steps": 50}


# -- helpers --------------------------------------------------------------------------------


def only_job(client: TestClient) -> Job:
    """The one job the app has stored (sync answers carry no request id)."""
    with client.app.state.services.store.engine.connect() as conn:
        ids = conn.execute(sa.select(jobs.c.id)).scalars().all()
    assert len(ids) == 1, ids
    return client.app.state.services.jobs.get(ids[0])


def stored_request(client: TestClient, job_id: str) -> GenerationRequest:
    job = client.app.state.services.jobs.get(job_id)
    assert job is not None, f"job {job_id} was not stored"
    return job.request


def result_files(settings: Settings, job_id: str) -> list:
    folder = settings.results_dir / "results" / job_id
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def queue_urls(app_id: str, request_id: str) -> dict[str, str]:
    root = f"{BASE}/queue/{app_id}/requests/{request_id}"
    return {"response_url": root, "status_url": f"{root}/status", "cancel_url": f"{root}/cancel"}


def run_sync(client: TestClient, endpoint: str, body: dict, **kwargs) -> dict:
    response = client.post(f"/{endpoint}", json=body, **kwargs)
    assert response.status_code == 200, (endpoint, body, response.text)
    return response.json()


def submit(client: TestClient, endpoint: str, body: dict, **kwargs) -> dict:
    response = client.post(f"/queue/{endpoint}", json=body, **kwargs)
    assert response.status_code == 200, (endpoint, body, response.text)
    submitted = response.json()
    request_id = submitted["request_id"]
    assert submitted == {
        "status": "IN_QUEUE",
        "request_id": request_id,
        **queue_urls(ENDPOINTS[endpoint], request_id),
        "queue_position": submitted["queue_position"],
    }
    assert type(submitted["queue_position"]) is int
    return submitted


def get_status(client: TestClient, url: str, logs: str | None = None) -> dict:
    params = {"logs": logs} if logs is not None else None
    response = client.get(url, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def wait_status(client: TestClient, url: str, done, timeout: float = 60.0, logs="1") -> dict:
    """Poll ``url`` (a status URL) until ``done(body)``; returns that body."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = get_status(client, url, logs)
        if done(body):
            return body
        time.sleep(0.01)
    raise AssertionError(f"{url}: condition not met after {timeout} s; last {body}")


def completed(body: dict) -> bool:
    return body["status"] == "COMPLETED"


def stepping(body: dict) -> bool:
    """IN_PROGRESS with at least one step done (its log has a Step line)."""
    return body["status"] == "IN_PROGRESS" and any(
        line["message"].startswith("Step ") for line in body["logs"] or []
    )


def download(client: TestClient, url: str, content_type: str) -> bytes:
    assert url.startswith(f"{BASE}/files/results/"), url
    response = client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == content_type
    return response.content


def image_of(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def assert_422(response, loc: list, error_type: str) -> dict:
    """FastAPI's 422 shape with one error at ``["body", *loc]``; returns that error."""
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"detail"}
    assert isinstance(body["detail"], list)
    assert len(body["detail"]) == 1, body
    error = body["detail"][0]
    assert {"loc", "msg", "type"} <= set(error)
    assert error["loc"] == ["body", *loc], error
    assert error["type"] == error_type, error
    assert isinstance(error["msg"], str)
    assert error["msg"]
    return error


def assert_fal_error(response, status: int, error_type: str) -> dict:
    """fal's flat error: ``{"detail": str, "error_type": str}`` plus X-Fal-Error-Type."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail", "error_type"}, body
    assert body["error_type"] == error_type
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert response.headers["x-fal-error-type"] == error_type
    return body


# -- validation: every rule, on every endpoint whose input has the field ---------------------

FIELD_CASES = [
    # (loc under body, value, pydantic error type, text the message must contain)
    (["image_size"], "square_xl", "image_size_preset", "square_hd"),
    (["image_size"], "SQUARE_HD", "image_size_preset", "landscape_16_9"),
    (["image_size"], "", "image_size_preset", "or an object"),
    (["image_size"], 512, "model_attributes_type", "dictionary"),
    (["image_size", "width"], 240, "greater_than_equal", "256"),
    (["image_size", "width"], 0, "greater_than_equal", "256"),
    (["image_size", "width"], 2064, "less_than_equal", "2048"),
    (["image_size", "width"], 1000, "multiple_of", "nearest valid value is 1008"),
    (["image_size", "width"], 1010, "multiple_of", "nearest valid value is 1008"),
    (["image_size", "width"], 2047, "multiple_of", "nearest valid value is 2048"),
    (["image_size", "width"], True, "number_type", "not a boolean"),
    (["image_size", "width"], "wide", "int_parsing", "integer"),
    (["image_size", "height"], 255, "greater_than_equal", "256"),
    (["image_size", "height"], 4096, "less_than_equal", "2048"),
    (["image_size", "height"], 300, "multiple_of", "nearest valid value is 304"),
    (["image_size", "height"], 257, "multiple_of", "nearest valid value is 256"),
    (["image_size", "height"], False, "number_type", "not a boolean"),
    (["num_images"], 0, "greater_than_equal", "1"),
    (["num_images"], 101, "less_than_equal", "100"),  # the wire bound; the server's is 10
    (["num_images"], True, "number_type", "not a boolean"),
    (["seed"], -1, "greater_than_equal", "0"),
    (["seed"], 2**64, "less_than_equal", str(MAX_SEED)),
    (["seed"], True, "number_type", "not a boolean"),
    (["output_format"], "gif", "literal_error", "'jpeg' or 'png'"),
    (["output_format"], "webp", "literal_error", "'jpeg' or 'png'"),
    (["safety_tolerance"], "7", "literal_error", "'6'"),
    (["safety_tolerance"], "0", "literal_error", "'1'"),
    (["safety_tolerance"], 2, "literal_error", "'2'"),
    (["sync_mode"], "sometimes", "bool_parsing", "boolean"),
]


@pytest.mark.parametrize(
    ("loc", "value", "error_type", "message_part"),
    FIELD_CASES,
    ids=[f"{'.'.join(c[0])}={c[1]!r}"[:40] for c in FIELD_CASES],
)
def test_common_field_rejected(client, loc, value, error_type, message_part):
    before = job_count(client)
    for endpoint in ENDPOINTS:
        for path in (f"/{endpoint}", f"/queue/{endpoint}"):
            body = {"prompt": "x", **FAST}
            if loc[0] == "image_size" and len(loc) == 2:
                body["image_size"] = {"width": 256, "height": 256, loc[1]: value}
            else:
                body[loc[0]] = value
            error = assert_422(client.post(path, json=body), loc, error_type)
            assert message_part in error["msg"], (path, error)
            assert error["input"] == value, (path, error)
    assert job_count(client) == before


STEPS_CASES = [
    ("num_inference_steps", 0, "greater_than_equal", "1"),
    ("num_inference_steps", 51, "less_than_equal", "50"),
    ("num_inference_steps", True, "number_type", "not a boolean"),
    ("num_inference_steps", 2.5, "int_from_float", "integer"),
    ("guidance_scale", 0.5, "greater_than_equal", "1"),
    ("guidance_scale", 21, "less_than_equal", "20"),
    ("guidance_scale", False, "number_type", "not a boolean"),
    ("guidance_scale", "strong", "float_parsing", "number"),
    ("acceleration", "turbo", "literal_error", "'none', 'regular' or 'high'"),
]


@pytest.mark.parametrize(
    ("field", "value", "error_type", "message_part"),
    STEPS_CASES,
    ids=[f"{c[0]}={c[1]!r}" for c in STEPS_CASES],
)
def test_steps_and_guidance_rejected(client, field, value, error_type, message_part):
    before = job_count(client)
    for endpoint in STEPS_ENDPOINTS:
        for path in (f"/{endpoint}", f"/queue/{endpoint}"):
            body = {"prompt": "x", **FAST, field: value}
            error = assert_422(client.post(path, json=body), [field], error_type)
            assert message_part in error["msg"], (path, error)
    assert job_count(client) == before


def test_prompt_missing_rejected(client):
    before = job_count(client)
    for endpoint in ENDPOINTS:
        for path in (f"/{endpoint}", f"/queue/{endpoint}"):
            assert_422(client.post(path, json=FAST), ["prompt"], "missing")
            assert_422(client.post(path, json={"prompt": None, **FAST}), ["prompt"], "string_type")
    assert job_count(client) == before


def test_prompt_lone_surrogate_rejected(client):
    before = job_count(client)
    # A JSON escape of a lone surrogate: valid JSON, but no Unicode text.
    content = b'{"prompt": "fox \\ud800", "image_size": {"width": 256, "height": 256}}'
    for endpoint in ENDPOINTS:
        for path in (f"/{endpoint}", f"/queue/{endpoint}"):
            response = client.post(
                path, content=content, headers={"content-type": "application/json"}
            )
            error = assert_422(response, ["prompt"], "string_unicode")
            assert "surrogate" in error["msg"]
    assert job_count(client) == before


def test_dimension_error_carries_nearest_value(client):
    body = {"prompt": "x", "image_size": {"width": 1020, "height": 256}}
    error = assert_422(
        client.post("/queue/fal-ai/flux/dev", json=body), ["image_size", "width"], "multiple_of"
    )
    assert error["ctx"] == {"multiple_of": 16, "nearest": 1024}
    assert error["msg"] == "Input should be a multiple of 16; the nearest valid value is 1024"


def test_every_invalid_field_named(client):
    body = {"image_size": {"width": 100, "height": 250}, "seed": -5, "num_images": 101}
    response = client.post("/queue/fal-ai/flux/dev", json=body)
    assert response.status_code == 422
    locs = sorted(tuple(error["loc"]) for error in response.json()["detail"])
    assert locs == [
        ("body", "image_size", "height"),
        ("body", "image_size", "width"),
        ("body", "num_images"),
        ("body", "prompt"),
        ("body", "seed"),
    ]
    assert job_count(client) == 0


@pytest.mark.parametrize("body", [[{"prompt": "x"}], "a red fox", None], ids=repr)
def test_body_not_an_object_rejected(client, body):
    response = client.post("/queue/fal-ai/flux/dev", json=body)
    assert response.status_code == 422, response.text
    assert job_count(client) == 0


def test_schnell_step_limit():
    """A schnell-kind model takes at most 12 steps; the error names fal's own field."""
    schnell = MODEL_SPECS["flux-schnell"]
    inputs = FluxInput(prompt="x", num_inference_steps=13)
    with pytest.raises(InvalidRequest) as raised:
        to_generation_request("fal-ai/flux/schnell", inputs, schnell)
    assert raised.value.field == "num_inference_steps"
    assert raised.value.value == 13
    assert "12" in raised.value.message

    request = to_generation_request(
        "fal-ai/flux/schnell", FluxInput(prompt="x", num_inference_steps=12), schnell
    )
    assert request.steps == 12
    assert request.guidance is None  # schnell has no guidance input
    default = to_generation_request("fal-ai/flux/schnell", FluxInput(prompt="x"), schnell)
    assert default.steps == 4


# -- acceptances read from the stored request ----------------------------------------------

PRESETS = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_image_size_presets(idle_client, endpoint):
    for preset, size in PRESETS.items():
        submitted = submit(idle_client, endpoint, {"prompt": "p", "image_size": preset})
        request = stored_request(idle_client, submitted["request_id"])
        assert (request.width, request.height) == size, preset
    # Absent: landscape_4_3. An object: exactly its sides, at the limits too.
    request = stored_request(
        idle_client, submit(idle_client, endpoint, {"prompt": "p"})["request_id"]
    )
    assert (request.width, request.height) == (1024, 768)
    for width, height in [(256, 2048), (2048, 256), (528, 272)]:
        body = {"prompt": "p", "image_size": {"width": width, "height": height}}
        request = stored_request(idle_client, submit(idle_client, endpoint, body)["request_id"])
        assert (request.width, request.height) == (width, height)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_defaults_stored(idle_client, endpoint):
    submitted = submit(idle_client, endpoint, {"prompt": "a red fox"})
    request = stored_request(idle_client, submitted["request_id"])
    assert request.endpoint == endpoint
    assert request.model == "tiny"
    assert request.prompt == "a red fox"
    assert request.output_format is OutputFormat.JPEG
    assert request.num_images == 1
    assert request.safety_tolerance == 2
    assert request.inline_images is False
    assert request.steps == 4  # the tiny model's default
    assert request.guidance == (3.0 if endpoint.startswith("fal-ai/flux-pro/") else 3.5)
    assert 0 <= request.seed <= MAX_SEED


ACCEPTED_VALUES = [
    ({"seed": 0}, {"seed": 0}),
    ({"seed": MAX_SEED}, {"seed": MAX_SEED}),
    ({"seed": None}, {}),
    ({"num_images": 4}, {"num_images": 4}),
    ({"output_format": "png"}, {"output_format": OutputFormat.PNG}),
    ({"safety_tolerance": "1"}, {"safety_tolerance": 1}),
    ({"safety_tolerance": "6"}, {"safety_tolerance": 2}),  # clamped: --max-safety-tolerance 2
    ({"sync_mode": True}, {"inline_images": True}),
    ({"num_inference_steps": 1, "guidance_scale": 1}, {"steps": 1, "guidance": 1.0}),
    ({"num_inference_steps": 50, "guidance_scale": 20}, {"steps": 50, "guidance": 20.0}),
    ({"acceleration": "high"}, {"acceleration": "high"}),
]


@pytest.mark.parametrize(
    ("body", "expected"), ACCEPTED_VALUES, ids=[str(b)[:40] for b, _ in ACCEPTED_VALUES]
)
def test_boundary_values_accepted(idle_client, body, expected):
    submitted = submit(idle_client, "fal-ai/flux/dev", {"prompt": "p", **body})
    request = stored_request(idle_client, submitted["request_id"])
    for name, value in expected.items():
        assert getattr(request, name) == value, (name, request)


def test_flux_pro_ignores_steps_and_guidance(idle_client):
    """fal-ai/flux-pro/v1.1 has neither field: they are unknown fields there, not checked."""
    body = {"prompt": "p", "num_inference_steps": 500, "guidance_scale": 0, "acceleration": 1}
    submitted = submit(idle_client, "fal-ai/flux-pro/v1.1", body)
    request = stored_request(idle_client, submitted["request_id"])
    assert request.steps == 4  # the serving (tiny) model's default, not the client's
    assert request.guidance == 3.0
    assert request.acceleration is None  # not a field here: the model's own tier


def test_unknown_fields_ignored(idle_client):
    body = {
        "prompt": "fox",
        "image_size": "square",
        "enable_safety_checker": False,
        "enhance_prompt": True,
        "aspect_ratio": "16:9",
        "raw": True,
        "nested": {"anything": [1, 2]},
    }
    for endpoint in ENDPOINTS:
        request = stored_request(idle_client, submit(idle_client, endpoint, body)["request_id"])
        assert (request.width, request.height) == (512, 512)
        assert request.prompt == "fox"


# -- sync runs -----------------------------------------------------------------------------


def assert_output(body: dict, prompt: str, count: int, content_type: str) -> None:
    assert set(body) == {"images", "timings", "seed", "has_nsfw_concepts", "prompt"}, body
    assert body["prompt"] == prompt
    assert type(body["seed"]) is int
    assert 0 <= body["seed"] <= MAX_SEED
    assert body["has_nsfw_concepts"] == [False] * count
    assert set(body["timings"]) == {"inference"}
    assert isinstance(body["timings"]["inference"], float)
    assert body["timings"]["inference"] > 0
    assert len(body["images"]) == count
    for image in body["images"]:
        assert set(image) == {"url", "width", "height", "content_type"}, image
        assert (image["width"], image["height"]) == (256, 256)
        assert image["content_type"] == content_type


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_every_endpoint_answers_sync(client, endpoint):
    body = run_sync(client, endpoint, {"prompt": f"fox on {endpoint}", **FAST})
    assert_output(body, f"fox on {endpoint}", 1, "image/jpeg")
    data = download(client, body["images"][0]["url"], "image/jpeg")
    image = image_of(data)
    assert image.format == "JPEG"
    assert image.size == (256, 256)

    job = only_job(client)
    assert job.status is JobStatus.SUCCEEDED
    assert job.request.endpoint == endpoint
    assert job.request.seed == body["seed"]


def test_sync_output_png_with_seed(client):
    body = run_sync(
        client, "fal-ai/flux/dev", {"prompt": "png", "seed": 7, "output_format": "png", **FAST}
    )
    assert_output(body, "png", 1, "image/png")
    assert body["seed"] == 7
    image = image_of(download(client, body["images"][0]["url"], "image/png"))
    assert image.format == "PNG"
    assert image.size == (256, 256)


def test_num_images_and_same_seed(client):
    request = {"prompt": "two", "seed": MAX_SEED - 1, "num_images": 2, **FAST}
    first = run_sync(client, "fal-ai/flux/dev", request)
    assert_output(first, "two", 2, "image/jpeg")
    assert first["seed"] == MAX_SEED - 1
    first_images = [download(client, i["url"], "image/jpeg") for i in first["images"]]
    assert first["images"][0]["url"] != first["images"][1]["url"]
    assert first_images[0] != first_images[1]  # one seed, two different images
    for data in first_images:
        assert image_of(data).size == (256, 256)

    again = run_sync(client, "fal-ai/flux/dev", request)
    assert again["seed"] == first["seed"]
    assert [download(client, i["url"], "image/jpeg") for i in again["images"]] == first_images


def test_random_seed_when_absent(client):
    seeds = {run_sync(client, "fal-ai/flux/schnell", {"prompt": "s", **FAST})["seed"] for _ in "ab"}
    assert len(seeds) == 2


@pytest.mark.parametrize("output_format", ["jpeg", "png"])
def test_sync_mode_returns_data_uris_and_keeps_nothing(client, settings, output_format):
    body = run_sync(
        client,
        "fal-ai/flux/dev",
        {
            "prompt": "inline",
            "num_images": 2,
            "sync_mode": True,
            "output_format": output_format,
            **FAST,
        },
    )
    content_type = f"image/{output_format}"
    assert_output(body, "inline", 2, content_type)
    prefix = f"data:{content_type};base64,"
    decoded = []
    for image in body["images"]:
        assert image["url"].startswith(prefix), image["url"][:60]
        data = base64.b64decode(image["url"].removeprefix(prefix), validate=True)
        picture = image_of(data)
        assert picture.format == output_format.upper()
        assert picture.size == (256, 256)
        decoded.append(data)
    assert decoded[0] != decoded[1]

    job = only_job(client)
    assert job.status is JobStatus.SUCCEEDED
    assert job.result_keys == []  # handed over inline, then forgotten
    assert result_files(settings, job.id) == []


def test_queued_sync_mode_hands_images_over_once(client, settings):
    submitted = submit(client, "fal-ai/flux/dev", {"prompt": "once", "sync_mode": True, **FAST})
    wait_status(client, submitted["status_url"], completed)
    first = client.get(submitted["response_url"])
    assert first.status_code == 200
    assert first.json()["images"][0]["url"].startswith("data:image/jpeg;base64,")
    assert result_files(settings, submitted["request_id"]) == []
    again = client.get(submitted["response_url"])
    assert again.status_code == 410
    assert again.json()["error_type"] == "gone"


def test_authorization_key_accepted(client):
    headers = {"Authorization": "Key abc"}
    body = run_sync(client, "fal-ai/flux/dev", {"prompt": "k", **FAST}, headers=headers)
    assert len(body["images"]) == 1
    submitted = submit(client, "fal-ai/flux/dev", {"prompt": "k", **FAST}, headers=headers)
    status = wait_status(client, submitted["status_url"], completed)
    assert status["error"] is None
    response = client.get(submitted["response_url"], headers=headers)
    assert response.status_code == 200
    bearer = client.get(submitted["status_url"], headers={"Authorization": "Bearer jwt"})
    assert bearer.status_code == 200


# -- the queue -------------------------------------------------------------------------------


def test_queue_positions(idle_client):
    submitted = [
        submit(idle_client, endpoint, {"prompt": str(n)})
        for n, endpoint in enumerate(
            ["fal-ai/flux/dev", "fal-ai/flux-pro/v1.1", "fal-ai/flux/schnell"]
        )
    ]
    assert [s["queue_position"] for s in submitted] == [0, 1, 2]
    for position, item in enumerate(submitted):
        status = get_status(idle_client, item["status_url"])
        assert status == {
            "status": "IN_QUEUE",
            "request_id": item["request_id"],
            "response_url": item["response_url"],
            "status_url": item["status_url"],
            "cancel_url": item["cancel_url"],
            "queue_position": position,
            "logs": None,
            "metrics": None,
            "error": None,
            "error_type": None,
        }
    # The first leaves the queue: the others move up.
    assert idle_client.put(submitted[0]["cancel_url"]).status_code == 202
    assert get_status(idle_client, submitted[1]["status_url"])["queue_position"] == 0
    assert get_status(idle_client, submitted[2]["status_url"])["queue_position"] == 1


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_status_result_cancel_with_and_without_subpath(idle_client, endpoint):
    submitted = submit(idle_client, endpoint, {"prompt": "sub"})
    request_id = submitted["request_id"]
    subpath_root = f"/queue/{endpoint}/requests/{request_id}"
    plain_root = f"/queue/{ENDPOINTS[endpoint]}/requests/{request_id}"
    for root in (plain_root, subpath_root):
        status = get_status(idle_client, f"{root}/status")
        assert status["status"] == "IN_QUEUE"
        assert status["request_id"] == request_id
        # The URLs in the answer never carry the subpath.
        assert status["status_url"] == submitted["status_url"]
        assert_fal_error(idle_client.get(root), 400, "still_in_progress")

    response = idle_client.put(f"{subpath_root}/cancel")
    assert response.status_code == 202
    assert response.json() == {"status": "CANCELLATION_REQUESTED"}
    for root in (plain_root, subpath_root):
        status = get_status(idle_client, f"{root}/status")
        assert status["status"] == "COMPLETED"
        assert status["error_type"] == "cancelled"
        assert_fal_error(idle_client.get(root), 400, "cancelled")
        again = idle_client.put(f"{root}/cancel")
        assert again.status_code == 400
        assert again.json() == {"status": "ALREADY_COMPLETED"}


def test_cancel_queued(idle_client):
    submitted = submit(idle_client, "fal-ai/flux/dev", {"prompt": "never"})
    response = idle_client.put(submitted["cancel_url"])
    assert response.status_code == 202
    assert response.json() == {"status": "CANCELLATION_REQUESTED"}

    for logs in (None, "1"):
        status = get_status(idle_client, submitted["status_url"], logs)
        assert status["status"] == "COMPLETED"
        assert status["error_type"] == "cancelled"
        assert isinstance(status["error"], str)
        assert status["error"]
        assert status["metrics"] == {"inference_time": 0.0}
        assert "queue_position" in status
        assert status["queue_position"] is None
        assert status["logs"] == ([] if logs else None)
    assert_fal_error(idle_client.get(submitted["response_url"]), 400, "cancelled")

    job = idle_client.app.state.services.jobs.get(submitted["request_id"])
    assert job.status is JobStatus.CANCELLED
    assert job.started_at is None


def test_result_before_completion(idle_client):
    submitted = submit(idle_client, "fal-ai/flux/dev", {"prompt": "wait"})
    response = idle_client.get(submitted["response_url"])
    assert_fal_error(response, 400, "still_in_progress")
    assert "x-fal-request-id" not in response.headers


def test_unknown_request_id(idle_client):
    for app_id in ["fal-ai/flux", "fal-ai/flux/dev", "fal-ai/flux-pro", "fal-ai/flux-pro/v1.1"]:
        root = f"/queue/{app_id}/requests/no-such-request"
        body = assert_fal_error(idle_client.get(f"{root}/status"), 404, "not_found")
        assert "no-such-request" in body["detail"]
        assert_fal_error(idle_client.get(root), 404, "not_found")
        response = idle_client.put(f"{root}/cancel")
        assert response.status_code == 404
        assert response.json() == {"status": "NOT_FOUND"}


def test_queue_flow_to_completion(client):
    submitted = submit(
        client, "fal-ai/flux-1/dev", {"prompt": "queued fox", "seed": 11, "num_images": 2, **FAST}
    )
    request_id = submitted["request_id"]
    status = wait_status(client, submitted["status_url"], completed)
    assert status["request_id"] == request_id
    assert status["error"] is None
    assert status["error_type"] is None
    assert set(status["metrics"]) == {"inference_time"}
    assert status["metrics"]["inference_time"] > 0
    assert isinstance(status["logs"], list)
    assert status["logs"][0]["message"] == "Generating 2 image(s), 1 steps"
    assert get_status(client, submitted["status_url"], "false")["logs"] is None

    for url in (submitted["response_url"], f"{BASE}/queue/fal-ai/flux-1/dev/requests/{request_id}"):
        response = client.get(url)
        assert response.status_code == 200, response.text
        assert response.headers["x-fal-request-id"] == request_id
        body = response.json()
        assert_output(body, "queued fox", 2, "image/jpeg")
        assert body["seed"] == 11
        images = [download(client, image["url"], "image/jpeg") for image in body["images"]]
        assert all(image_of(data).size == (256, 256) for data in images)

    response = client.put(submitted["cancel_url"])
    assert response.status_code == 400
    assert response.json() == {"status": "ALREADY_COMPLETED"}
    # Still there: a refused cancel changes nothing.
    assert client.get(submitted["response_url"]).status_code == 200


def test_progress_logs_while_running(client):
    submitted = submit(client, "fal-ai/flux/dev", {"prompt": "slow", "seed": 3, **LONG})
    url = submitted["status_url"]
    body = wait_status(client, url, stepping, logs="1")
    assert body["queue_position"] is None
    assert body["metrics"] is None
    first, *rest = body["logs"]
    assert first["message"] == "Generating 1 image(s), 50 steps"
    assert rest[-1]["message"].startswith("Step ")
    assert rest[-1]["message"].endswith("%)")
    for line in body["logs"]:
        assert set(line) == {"message", "level", "source", "timestamp"}
        assert line["level"] == "INFO"
        assert line["source"] == "USER"
        assert dt.datetime.fromisoformat(line["timestamp"]).tzinfo is not None

    for flag in ("true", "1"):
        running = get_status(client, url, flag)
        assert running["status"] == "IN_PROGRESS"
        assert isinstance(running["logs"], list)
        assert running["logs"][0] == first
    for flag in ("false", "0", None):
        running = get_status(client, url, flag)
        assert running["status"] == "IN_PROGRESS"
        assert "logs" in running
        assert running["logs"] is None

    # Stop it rather than wait for it.
    assert client.put(submitted["cancel_url"]).status_code == 202
    wait_status(client, url, completed)


def test_cancel_running(client, settings):
    submitted = submit(client, "fal-ai/flux/dev", {"prompt": "stop me", "seed": 5, **LONG})
    request_id = submitted["request_id"]
    wait_status(client, submitted["status_url"], stepping)
    job = client.app.state.services.jobs.get(request_id)
    assert job.status is JobStatus.RUNNING
    assert 0 < job.progress < 1

    response = client.put(f"{BASE}/queue/fal-ai/flux/dev/requests/{request_id}/cancel")
    assert response.status_code == 202, response.text
    assert response.json() == {"status": "CANCELLATION_REQUESTED"}

    status = wait_status(client, submitted["status_url"], completed)
    assert status["error_type"] == "cancelled"
    assert isinstance(status["error"], str)
    assert status["error"]
    assert status["metrics"]["inference_time"] >= 0
    assert_fal_error(client.get(submitted["response_url"]), 400, "cancelled")
    again = client.put(submitted["cancel_url"])
    assert again.status_code == 400
    assert again.json() == {"status": "ALREADY_COMPLETED"}

    job = client.app.state.services.jobs.get(request_id)
    assert job.status is JobStatus.CANCELLED
    assert job.result_keys == []
    assert job.progress < 0.9  # stopped well before its last step
    assert result_files(settings, request_id) == []

    # The worker goes on to the next job.
    after = run_sync(client, "fal-ai/flux/dev", {"prompt": "next", **FAST})
    assert len(after["images"]) == 1
