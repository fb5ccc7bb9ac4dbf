"""--max-prompt-chars on every dialect: a prompt one past it is refused naming ``prompt``, in
the dialect's error shape, and nothing is stored; a prompt of exactly that length is served."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fluxserve.api.app import create_app
from fluxserve.config import Settings
from tests.helpers import assert_openai_error, image_bytes, job_count, job_ids, poll_result

LIMIT = Settings.model_fields["max_prompt_chars"].default
SMALL_BFL = {"width": 256, "height": 256, "steps": 1}
SMALL_FAL = {"image_size": {"width": 256, "height": 256}, "num_inference_steps": 1}
SMALL_OPENAI = {"size": "256x256", "steps": 1}

# (route, body besides the prompt, what a refusal looks like)
JSON_ROUTES = [
    ("/v1/flux-dev", SMALL_BFL, "fastapi"),
    ("/v1/tiny", SMALL_BFL, "fastapi"),  # POST /v1/{name}
    ("/fal-ai/flux/dev", SMALL_FAL, "fastapi"),
    ("/queue/fal-ai/flux/dev", SMALL_FAL, "fastapi"),
    ("/v1/images/generations", SMALL_OPENAI, "openai"),
]


def test_the_default_is_the_documented_bfl_limit():
    assert LIMIT == 10_000


def assert_refused_naming_prompt(response, shape: str) -> None:
    if shape == "openai":
        message = assert_openai_error(response, 400, "prompt", "invalid_request")
    else:  # BFL and fal: FastAPI's 422 shape, as for a value the wire schema refuses
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body", "prompt"]
        message = error["msg"]
        assert error["input"] is None  # the rejected prompt is not echoed back
    assert f"at most {LIMIT} characters" in message
    assert f"got {LIMIT + 1}" in message
    assert len(response.content) < 2000


@pytest.mark.parametrize(("path", "body", "shape"), JSON_ROUTES, ids=[r[0] for r in JSON_ROUTES])
def test_one_character_too_many_is_refused_before_anything_is_stored(client, path, body, shape):
    response = client.post(path, json={"prompt": "a" * (LIMIT + 1), **body})
    assert_refused_naming_prompt(response, shape)
    assert job_count(client) == 0


@pytest.mark.parametrize(("path", "body", "shape"), JSON_ROUTES, ids=[r[0] for r in JSON_ROUTES])
def test_exactly_the_limit_is_served(client, path, body, shape):
    prompt = "b" * LIMIT
    response = client.post(path, json={"prompt": prompt, **body})
    assert response.status_code == 200, response.text
    (job_id,) = job_ids(client)
    if path.startswith("/v1/flux") or path == "/v1/tiny":
        assert poll_result(client, job_id)["status"] == "Ready"
    job = client.app.state.services.jobs.get(job_id)
    assert job.request.prompt == prompt


def test_openai_edit(client):
    fields = {"model": "tiny", "size": "256x256", "steps": 2}  # image-to-image: 2 steps at least
    files = {"image": ("in.png", image_bytes((256, 256)), "image/png")}
    response = client.post(
        "/v1/images/edits", data={"prompt": "c" * (LIMIT + 1), **fields}, files=files
    )
    assert_refused_naming_prompt(response, "openai")
    assert job_count(client) == 0

    response = client.post("/v1/images/edits", data={"prompt": "c" * LIMIT, **fields}, files=files)
    assert response.status_code == 200, response.text
    assert job_count(client) == 1


def test_the_limit_is_a_setting_and_the_openapi_document_shows_it(tmp_path: Path, tiny_model_dir):
    settings = Settings(
        model=[str(tiny_model_dir)],
        data_dir=tmp_path / "data",
        worker_mode="thread",
        max_prompt_chars=50,
    )
    app = create_app(settings)  # no lifespan: no worker, the accepted job stays queued
    client = TestClient(app)
    try:
        response = client.post("/queue/fal-ai/flux/dev", json={"prompt": "d" * 51})
        assert response.status_code == 422
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body", "prompt"]
        assert "at most 50 characters" in error["msg"]
        assert client.post("/queue/fal-ai/flux/dev", json={"prompt": "d" * 50}).status_code == 200

        schemas = client.get("/openapi.json").json()["components"]["schemas"]
        assert schemas["FluxInput"]["properties"]["prompt"]["maxLength"] == 50
        assert schemas["ImagesGenerateRequest"]["properties"]["prompt"]["maxLength"] == 50
        # BFL's prompt may be null: the limit is on its text branch.
        bfl_prompt = schemas["FluxDevInputs"]["properties"]["prompt"]["anyOf"]
        assert {"type": "string", "maxLength": 50} in bfl_prompt
    finally:
        app.state.services.store.close()


# Other free text that is stored or quoted back in errors is bounded too.
BOUNDED = [
    ("/v1/flux-kontext-pro", {"prompt": "p", "aspect_ratio": "1" * 33}, "aspect_ratio"),
    ("/v1/flux-pro-1.1-ultra", {"prompt": "p", "aspect_ratio": "1" * 33}, "aspect_ratio"),
    ("/v1/flux-dev", {"prompt": "p", "webhook_url": "https://x.example/" + "a" * 2100},
     "webhook_url"),
    ("/v1/flux-dev", {"prompt": "p", "webhook_secret": "s" * 1000}, "webhook_secret"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "field"), BOUNDED, ids=[r[2] for r in BOUNDED])
def test_other_free_text_is_bounded(idle_client, path, body, field):
    response = idle_client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert [error["loc"] for error in response.json()["detail"]] == [["body", field]]
    assert job_count(idle_client) == 0


@pytest.mark.parametrize("field", ["model", "user"])
def test_openai_free_text_is_bounded(idle_client, field):
    body = {"prompt": "p", field: "m" * 257}
    response = idle_client.post("/v1/images/generations", json=body)
    assert_openai_error(response, 400, field, "string_too_long")
    assert job_count(idle_client) == 0


def test_finetune_id_query_is_bounded(idle_client):
    response = idle_client.get("/v1/finetune_details", params={"finetune_id": "f" * 201})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "finetune_id"]
