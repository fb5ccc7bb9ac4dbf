"""BFL request validation through the app: wire rules of api-compat.md §1 and BFL's openapi.

Rejections go through ``client`` (the app with a real thread worker on the tiny model) and
must answer FastAPI's 422 shape naming the field, without creating a job. Acceptances that
need no image go through ``idle_client`` (the same app without its lifespan, so no worker
runs): their jobs stay queued, and the tests read the stored request instead of generating
large default-sized images on CPU. Every image really generated is 256x256 with one step.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from fluxserve.domain import MAX_SEED, GenerationRequest, JobStatus, OutputFormat
from tests.helpers import SMALL, job_count, poll_result

ENDPOINTS = ["/v1/flux-dev", "/v1/flux-schnell", "/v1/flux-pro-1.1", "/v1/flux-pro"]
# The endpoints whose schema has steps and guidance (FLUX1.1 [pro] has neither).
STEPS_ENDPOINTS = ["/v1/flux-dev", "/v1/flux-schnell", "/v1/flux-pro"]


def stored_request(client: TestClient, job_id: str) -> GenerationRequest:
    job = client.app.state.services.jobs.get(job_id)
    assert job is not None, f"job {job_id} was not stored"
    return job.request


def submit(client: TestClient, endpoint: str, body: dict, **kwargs) -> dict:
    response = client.post(endpoint, json=body, **kwargs)
    assert response.status_code == 200, (endpoint, body, response.text)
    submitted = response.json()
    assert set(submitted) >= {"id", "polling_url"}
    assert submitted["polling_url"] == f"http://testserver/v1/get_result?id={submitted['id']}"
    return submitted


def assert_422(response, field: str | int | None, error_type: str) -> dict:
    """The FastAPI 422 shape with one error on ``field``; returns that error."""
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"detail"}
    assert isinstance(body["detail"], list)
    assert len(body["detail"]) == 1, body
    error = body["detail"][0]
    assert {"loc", "msg", "type"} <= set(error)
    expected_loc = ["body"] if field is None else ["body", field]
    assert error["loc"] == expected_loc, error
    assert error["type"] == error_type, error
    assert isinstance(error["msg"], str)
    assert error["msg"]
    return error


# -- rejections: every rule, on every endpoint whose schema has the field --------------------

FIELD_CASES = [
    # (field, value, pydantic error type, text the message must contain)
    ("width", 224, "greater_than_equal", "256"),
    ("width", 255, "greater_than_equal", "256"),
    ("width", 1441, "less_than_equal", "1440"),
    ("width", 1472, "less_than_equal", "1440"),
    ("width", 1000, "multiple_of", "nearest valid value is 992"),
    ("width", 1010, "multiple_of", "nearest valid value is 1024"),
    ("width", 1439, "multiple_of", "nearest valid value is 1440"),
    ("width", "abc", "int_parsing", "integer"),
    ("width", "512px", "int_parsing", "integer"),
    ("width", 512.5, "int_from_float", "integer"),
    ("height", 128, "greater_than_equal", "256"),
    ("height", 2048, "less_than_equal", "1440"),
    ("height", 300, "multiple_of", "nearest valid value is 288"),
    ("height", 272, "multiple_of", "nearest valid value is 288"),
    ("height", 257, "multiple_of", "nearest valid value is 256"),
    ("height", "tall", "int_parsing", "integer"),
    ("seed", -1, "greater_than_equal", "0"),
    ("seed", 2**64, "less_than_equal", str(MAX_SEED)),
    ("seed", "lucky", "int_parsing", "integer"),
    ("safety_tolerance", -1, "greater_than_equal", "0"),
    ("safety_tolerance", 7, "less_than_equal", "6"),
    ("output_format", "gif", "literal_error", "'jpeg', 'png' or 'webp'"),
    ("output_format", "JPEG", "literal_error", "'jpeg', 'png' or 'webp'"),
    ("prompt_upsampling", "maybe", "bool_parsing", "boolean"),
    ("webhook_url", "", "string_too_short", "at least 1 character"),
    ("webhook_url", "https://example.com/" + "a" * 2100, "string_too_long", "2083"),
]


@pytest.mark.parametrize(
    ("field", "value", "error_type", "message_part"),
    FIELD_CASES,
    ids=[f"{c[0]}={str(c[1])[:12]}" for c in FIELD_CASES],
)
def test_common_field_rejected(client, field, value, error_type, message_part):
    before = job_count(client)
    for endpoint in ENDPOINTS:
        response = client.post(endpoint, json={"prompt": "x", **SMALL, field: value})
        error = assert_422(response, field, error_type)
        assert message_part in error["msg"], (endpoint, error)
        assert error["input"] == value, (endpoint, error)
    assert job_count(client) == before


def test_dimension_error_carries_nearest_value(client):
    error = assert_422(client.post("/v1/flux-dev", json={"width": 1000}), "width", "multiple_of")
    assert error["ctx"] == {"multiple_of": 32, "nearest": 992}
    assert error["msg"] == "Input should be a multiple of 32; the nearest valid value is 992"


STEPS_CASES = [
    ("steps", 0, "greater_than_equal", "1"),
    ("steps", 51, "less_than_equal", "50"),
    ("steps", "many", "int_parsing", "integer"),
    ("guidance", 1.4, "greater_than_equal", "1.5"),
    ("guidance", 10.1, "less_than_equal", "10"),  # BFL's documented 1.5-10
    ("guidance", "strong", "float_parsing", "number"),
]


@pytest.mark.parametrize(
    ("field", "value", "error_type", "message_part"),
    STEPS_CASES,
    ids=[f"{c[0]}={c[1]}" for c in STEPS_CASES],
)
def test_steps_and_guidance_rejected(client, field, value, error_type, message_part):
    before = job_count(client)
    for endpoint in STEPS_ENDPOINTS:
        response = client.post(endpoint, json={field: value, **SMALL})
        error = assert_422(response, field, error_type)
        assert message_part in error["msg"], (endpoint, error)
    assert job_count(client) == before


def test_image_prompt_that_is_not_an_image_is_refused(client):
    before = job_count(client)
    for endpoint in ENDPOINTS:
        body = {"prompt": "x", "image_prompt": "aGVsbG8=", **SMALL}  # base64 of "hello"
        error = assert_422(client.post(endpoint, json=body), "image_prompt", "value_error")
        assert error["msg"] == "image_prompt is not an image file", endpoint
    assert job_count(client) == before


def test_every_invalid_field_named(client):
    before = job_count(client)
    response = client.post("/v1/flux-dev", json={"width": 100, "seed": -5, "steps": 99})
    assert response.status_code == 422
    locs = sorted(tuple(error["loc"]) for error in response.json()["detail"])
    assert locs == [("body", "seed"), ("body", "steps"), ("body", "width")]
    assert job_count(client) == before


BODY_CASES = [
    # (name, request kwargs, loc field, error type)
    (
        "not-json",
        {"content": b"width=256", "headers": {"content-type": "application/json"}},
        0,
        "json_invalid",
    ),
    (
        "truncated-json",
        {"content": b'{"width": 256', "headers": {"content-type": "application/json"}},
        13,
        "json_invalid",
    ),
    ("json-array", {"json": [{"width": 256}]}, None, "model_attributes_type"),
    ("json-string", {"json": "a red fox"}, None, "model_attributes_type"),
    (
        "json-null",
        {"content": b"null", "headers": {"content-type": "application/json"}},
        None,
        "model_attributes_type",
    ),
    ("missing", {}, None, "missing"),
]


@pytest.mark.parametrize(
    ("kwargs", "field", "error_type"),
    [c[1:] for c in BODY_CASES],
    ids=[c[0] for c in BODY_CASES],
)
def test_malformed_body_rejected(client, kwargs, field, error_type):
    before = job_count(client)
    for endpoint in ENDPOINTS:
        response = client.post(endpoint, **kwargs)
        assert_422(response, field, error_type)
    assert job_count(client) == before


def test_get_result_without_id(client):
    response = client.get("/v1/get_result")
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert len(detail) == 1
    assert detail[0]["loc"] == ["query", "id"]
    assert detail[0]["type"] == "missing"


def test_get_result_unknown_id(client):
    response = client.get("/v1/get_result", params={"id": "no-such-task"})
    assert response.status_code == 200
    assert response.json() == {
        "id": "no-such-task",
        "status": "Task not found",
        "result": None,
        "progress": None,
        "details": None,
        "preview": None,
    }


# -- acceptances ----------------------------------------------------------------------------


def test_max_seed_accepted_and_echoed(client):
    submitted = submit(
        client, "/v1/flux-dev", {"prompt": "seed", "seed": MAX_SEED, "steps": 1, **SMALL}
    )
    body = poll_result(client, submitted["id"])
    assert body["status"] == "Ready", body
    assert body["result"]["seed"] == MAX_SEED
    assert type(body["result"]["seed"]) is int


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_empty_body_accepted_with_defaults(idle_client, endpoint):
    before = job_count(idle_client)
    response = idle_client.post(endpoint, json={})
    assert response.status_code == 200, response.text
    submitted = response.json()
    assert submitted["id"]
    assert submitted["polling_url"] == f"http://testserver/v1/get_result?id={submitted['id']}"
    assert submitted["output_mp"] == 0.79  # 1024 x 768
    assert job_count(idle_client) == before + 1

    request = stored_request(idle_client, submitted["id"])
    assert request.endpoint == endpoint.removeprefix("/v1/")
    assert request.model == "tiny"
    assert (request.width, request.height) == (1024, 768)
    assert request.output_format is OutputFormat.JPEG
    assert request.prompt == ""
    assert request.safety_tolerance == 2
    assert request.prompt_upsampling is False
    assert request.steps == 4  # the tiny model's default
    assert request.guidance == 3.0
    assert 0 <= request.seed <= MAX_SEED

    job = idle_client.app.state.services.jobs.get(submitted["id"])
    assert job.status is JobStatus.QUEUED
    body = idle_client.get("/v1/get_result", params={"id": submitted["id"]}).json()
    assert body == {
        "id": submitted["id"],
        "status": "Pending",
        "result": None,
        "progress": 0.0,
        "details": None,
        "preview": None,
    }


def test_random_seeds_differ(idle_client):
    seeds = {
        stored_request(idle_client, submit(idle_client, "/v1/flux-dev", {})["id"]).seed
        for _ in range(3)
    }
    assert len(seeds) == 3


ACCEPTED_VALUES = [
    ({"width": 256, "height": 1440}, {"width": 256, "height": 1440}),
    ({"width": 1440, "height": 256}, {"width": 1440, "height": 256}),
    ({"width": "512", "height": "640"}, {"width": 512, "height": 640}),
    ({"seed": 0}, {"seed": 0}),
    ({"seed": MAX_SEED}, {"seed": MAX_SEED}),
    ({"seed": None}, {}),
    ({"safety_tolerance": 0}, {"safety_tolerance": 0}),
    ({"safety_tolerance": 6}, {"safety_tolerance": 2}),  # clamped: --max-safety-tolerance 2
    ({"output_format": "png"}, {"output_format": OutputFormat.PNG}),
    ({"output_format": "webp"}, {"output_format": OutputFormat.WEBP}),
    ({"output_format": None}, {"output_format": OutputFormat.JPEG}),
    ({"prompt_upsampling": True}, {"prompt_upsampling": True}),
    ({"prompt": "a red fox"}, {"prompt": "a red fox"}),
    ({"webhook_url": "https://example.com/hook", "webhook_secret": "s"}, {}),
    ({"image_prompt": None}, {}),
    ({"steps": 1, "guidance": 1.5}, {"steps": 1, "guidance": 1.5}),
    ({"steps": 50, "guidance": 5.0}, {"steps": 50, "guidance": 5.0}),
]


@pytest.mark.parametrize(
    ("body", "expected"), ACCEPTED_VALUES, ids=[str(b)[:40] for b, _ in ACCEPTED_VALUES]
)
def test_boundary_values_accepted(idle_client, body, expected):
    submitted = submit(idle_client, "/v1/flux-dev", body)
    request = stored_request(idle_client, submitted["id"])
    for name, value in expected.items():
        assert getattr(request, name) == value, (name, request)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_unknown_fields_ignored(idle_client, endpoint):
    body = {
        "prompt": "fox",
        "width": 512,
        "height": 256,
        "interval": 2,
        "aspect_ratio": "16:9",
        "api_key_override": "other-key",
        "raw": True,
        "nested": {"anything": [1, 2]},
    }
    submitted = submit(idle_client, endpoint, body)
    request = stored_request(idle_client, submitted["id"])
    # width/height win over aspect_ratio, as the Vercel AI SDK sends both.
    assert (request.width, request.height) == (512, 256)
    assert request.prompt == "fox"


def test_unknown_interval_ignored_on_flux_dev(idle_client):
    """interval belongs to flux-pro only; elsewhere it is an unknown field, not checked."""
    submit(idle_client, "/v1/flux-dev", {"interval": 99})
    assert_422(
        idle_client.post("/v1/flux-pro", json={"interval": 99}), "interval", "less_than_equal"
    )


@pytest.mark.parametrize("header", ["x-key", "X-Key", "X-KEY"])
def test_x_key_header_any_case(idle_client, header):
    submitted = submit(idle_client, "/v1/flux-dev", {"prompt": "k"}, headers={header: "secret"})
    response = idle_client.get(
        "/v1/get_result", params={"id": submitted["id"]}, headers={header: "secret"}
    )
    assert response.status_code == 200
    assert response.json()["status"] == "Pending"


def test_accept_image_still_gets_json(idle_client):
    response = idle_client.post("/v1/flux-dev", json={"prompt": "x"}, headers={"Accept": "image/*"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert set(response.json()) >= {"id", "polling_url"}

    rejected = idle_client.post("/v1/flux-dev", json={"width": 1}, headers={"Accept": "image/*"})
    assert_422(rejected, "width", "greater_than_equal")
    assert rejected.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "extras",
    [
        pytest.param({"steps": 7, "guidance": 4.5}, id="valid-values"),
        pytest.param({"steps": 500, "guidance": 0, "interval": 9}, id="out-of-range"),
        pytest.param({"steps": "many", "guidance": "strong"}, id="wrong-types"),
    ],
)
def test_flux_pro_11_ignores_steps_and_guidance(idle_client, extras):
    submitted = submit(idle_client, "/v1/flux-pro-1.1", {"prompt": "p", **extras})
    request = stored_request(idle_client, submitted["id"])
    assert request.steps == 4  # the serving (tiny) model's default, not the client's
    assert request.guidance == 3.0
