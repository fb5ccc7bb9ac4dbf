"""ModelRouter and the BFL convert module, without a running worker.

Specs are the real registry entries (``MODEL_SPECS``), renamed with ``dataclasses.replace``
where a test needs a model under another name. The last tests build the app around
services that claim a flux-dev model (the tiny weights under that name) and never start
the lifespan, so no worker loads anything and submitted jobs stay queued.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fluxserve.api.app import create_app
from fluxserve.api.bfl import convert
from fluxserve.api.bfl.protocol import (
    FluxDevInputs,
    FluxPro11Inputs,
    FluxProInputs,
    FluxSchnellInputs,
)
from fluxserve.bootstrap import build_services
from fluxserve.config import Settings
from fluxserve.domain import MAX_SEED, GenerationRequest, Job, JobStatus, OutputFormat
from fluxserve.errors import ConfigurationError, InvalidRequest, ModelNotAvailable
from fluxserve.jobs.pricing import PriceTable
from fluxserve.jobs.routing import ENDPOINT_KINDS, ModelRouter
from fluxserve.specs import MODEL_SPECS, ModelKind, ModelSpec
from fluxserve.weights import ResolvedModel
from tests.helpers import job_count

SCHNELL = MODEL_SPECS["flux-schnell"]
DEV = MODEL_SPECS["flux-dev"]
TINY = MODEL_SPECS["tiny"]
BFL_ENDPOINTS = ["flux-dev", "flux-schnell", "flux-pro-1.1", "flux-pro"]


def renamed(spec: ModelSpec, name: str) -> ModelSpec:
    return dataclasses.replace(spec, name=name, source=f"local/{name}")


def models(*specs: ModelSpec) -> dict[str, ModelSpec]:
    return {spec.name: spec for spec in specs}


# -- ModelRouter ----------------------------------------------------------------------------


def test_endpoint_kinds_cover_every_endpoint_of_every_dialect():
    text = {ModelKind.DEV, ModelKind.SCHNELL}
    assert {k for k, v in ENDPOINT_KINDS.items() if v in text} == {
        "flux-dev", "flux-schnell", "flux-pro-1.1", "flux-pro", "fal-ai/flux/schnell",
        "fal-ai/flux/dev", "fal-ai/flux/dev/image-to-image", "fal-ai/flux-1/schnell",
        "fal-ai/flux-1/dev", "fal-ai/flux-pro/v1.1", "flux-pro-1.1-ultra",
        "fal-ai/flux-pro/v1.1-ultra", "flux-pro-1.1-ultra-finetuned", "fal-ai/flux-lora",
        "fal-ai/flux-lora/image-to-image",
    }  # fmt: skip
    assert {k for k, v in ENDPOINT_KINDS.items() if v is ModelKind.KREA} == {
        "fal-ai/flux/krea", "fal-ai/flux/krea/image-to-image", "fal-ai/flux-1/krea",
    }  # fmt: skip
    assert {k for k, v in ENDPOINT_KINDS.items() if v is ModelKind.KONTEXT} == {
        "flux-kontext-pro", "flux-kontext-max", "fal-ai/flux-kontext/dev",
        "fal-ai/flux-pro/kontext", "fal-ai/flux-pro/kontext/max",
        "fal-ai/flux-pro/kontext/multi", "fal-ai/flux-pro/kontext/max/multi",
        "fal-ai/flux-pro/kontext/text-to-image", "fal-ai/flux-pro/kontext/max/text-to-image",
    }  # fmt: skip
    assert {k for k, v in ENDPOINT_KINDS.items() if v is ModelKind.FILL} == {
        "flux-pro-1.0-fill", "flux-pro-1.0-expand", "fal-ai/flux-pro/v1/fill",
        "flux-pro-1.0-fill-finetuned",
    }  # fmt: skip


def test_image_endpoints_need_a_model_of_their_kind_not_tiny():
    kontext, fill = MODEL_SPECS["tiny-kontext"], MODEL_SPECS["tiny-fill"]
    router = ModelRouter(models(TINY, kontext, fill))
    assert router.route("flux-kontext-max") is kontext
    assert router.route("fal-ai/flux-pro/v1/fill") is fill
    assert router.route("fal-ai/flux/dev/image-to-image") is TINY
    only_tiny = ModelRouter(models(TINY))
    with pytest.raises(ModelNotAvailable) as raised:
        only_tiny.route("flux-pro-1.0-expand")
    assert "a Fill model such as flux-fill-dev" in raised.value.message
    assert "this server has tiny" in raised.value.message


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("flux-dev", "my-dev"),
        ("flux-schnell", "my-schnell"),
        ("flux-pro-1.1", "my-dev"),
        ("flux-pro", "my-dev"),
    ],
)
def test_route_by_kind(endpoint, expected):
    router = ModelRouter(models(renamed(SCHNELL, "my-schnell"), renamed(DEV, "my-dev")))
    spec = router.route(endpoint)
    assert spec.name == expected
    assert spec is router.models[expected]


def test_route_by_model_name_beats_kind():
    # A schnell-kind model named flux-pro serves flux-pro, though flux-pro wants a dev kind.
    router = ModelRouter(models(renamed(DEV, "my-dev"), renamed(SCHNELL, "flux-pro")))
    assert router.route("flux-pro").name == "flux-pro"
    assert router.route("flux-pro-1.1").name == "my-dev"


def test_alias_beats_name_and_kind():
    router = ModelRouter(
        models(DEV, SCHNELL),
        aliases={"flux-dev": "flux-schnell", "flux-pro-1.1": "flux-schnell"},
    )
    assert router.route("flux-dev") is SCHNELL
    assert router.route("flux-pro-1.1") is SCHNELL
    assert router.route("flux-pro") is DEV
    assert router.route("flux-schnell") is SCHNELL


def test_alias_adds_a_new_endpoint_name():
    router = ModelRouter(models(DEV), aliases={"flux-kontext-pro": "flux-dev"})
    assert router.route("flux-kontext-pro") is DEV


@pytest.mark.parametrize("endpoint", BFL_ENDPOINTS)
def test_tiny_answers_every_endpoint(endpoint):
    tiny = renamed(TINY, "tiny-test")
    router = ModelRouter(models(tiny))
    assert router.route(endpoint) is tiny


def test_kind_match_beats_tiny():
    router = ModelRouter(models(TINY, renamed(SCHNELL, "my-schnell")))
    assert router.route("flux-schnell").name == "my-schnell"
    assert router.route("flux-dev") is TINY  # no dev-kind model: the test model answers


@pytest.mark.parametrize("endpoint", ["flux-schnell", "flux-kontext-pro"])
def test_endpoint_without_model_raises(endpoint):
    router = ModelRouter(models(renamed(DEV, "my-dev"), renamed(DEV, "other-dev")))
    with pytest.raises(ModelNotAvailable) as raised:
        router.route(endpoint)
    message = raised.value.message
    assert f"No loaded model serves {endpoint}" in message
    assert "my-dev, other-dev" in message
    assert f"--alias {endpoint}=MODEL" in message
    assert str(raised.value) == message


def test_dev_endpoints_without_dev_model_raise():
    router = ModelRouter(models(SCHNELL))
    for endpoint in ["flux-dev", "flux-pro-1.1", "flux-pro"]:
        with pytest.raises(ModelNotAvailable, match="this server has flux-schnell"):
            router.route(endpoint)


def test_alias_to_model_not_loaded_raises_at_construction():
    with pytest.raises(ConfigurationError, match="flux-pro=flux-dev") as raised:
        ModelRouter(models(SCHNELL), aliases={"flux-pro": "flux-dev"})
    assert "loaded: flux-schnell" in str(raised.value)


def test_table():
    router = ModelRouter(
        models(renamed(DEV, "my-dev")),
        aliases={"flux-kontext-pro": "my-dev", "flux-pro": "my-dev"},
    )
    table = router.table()
    assert {name: table[name] for name in BFL_ENDPOINTS} == {
        "flux-dev": "my-dev",
        "flux-schnell": None,
        "flux-pro-1.1": "my-dev",
        "flux-pro": "my-dev",
    }
    assert table["flux-kontext-pro"] == "my-dev"
    assert table["fal-ai/flux/dev"] == "my-dev"
    assert table["fal-ai/flux/schnell"] is None
    assert table["flux-kontext-max"] is None
    assert list(table) == list(ENDPOINT_KINDS)


def test_table_with_both_kinds():
    router = ModelRouter(models(DEV, SCHNELL))
    served = {ModelKind.DEV: "flux-dev", ModelKind.SCHNELL: "flux-schnell"}
    expected = {name: served.get(kind) for name, kind in ENDPOINT_KINDS.items()}
    assert router.table() == expected


# -- convert.to_generation_request ----------------------------------------------------------


def test_schnell_defaults():
    request = convert.to_generation_request("flux-schnell", FluxSchnellInputs(), SCHNELL)
    assert request.model == "flux-schnell"
    assert request.endpoint == "flux-schnell"
    assert request.steps == 4
    assert request.guidance is None
    assert (request.width, request.height) == (1024, 768)
    assert request.output_format is OutputFormat.JPEG
    assert request.prompt == ""
    assert request.safety_tolerance == 2
    assert request.prompt_upsampling is False


def test_schnell_drops_guidance():
    inputs = FluxSchnellInputs(guidance=4.5, steps=12)
    request = convert.to_generation_request("flux-schnell", inputs, SCHNELL)
    assert request.guidance is None
    assert request.steps == 12


def test_schnell_rejects_more_than_max_steps():
    with pytest.raises(InvalidRequest) as raised:
        convert.to_generation_request("flux-schnell", FluxSchnellInputs(steps=13), SCHNELL)
    assert raised.value.field == "steps"
    assert raised.value.value == 13
    assert "12" in raised.value.message
    assert "13" in raised.value.message
    assert "flux-schnell" in raised.value.message


def test_dev_defaults():
    request = convert.to_generation_request("flux-dev", FluxDevInputs(), DEV)
    assert request.model == "flux-dev"
    assert request.steps == 28
    assert request.guidance == 3.0


def test_dev_keeps_client_values():
    inputs = FluxDevInputs(
        prompt="a red fox",
        width=512,
        height=1440,
        steps=50,
        guidance=1.5,
        seed=MAX_SEED,
        safety_tolerance=6,
        output_format="webp",
        prompt_upsampling=True,
    )
    request = convert.to_generation_request("flux-dev", inputs, DEV)
    assert request == GenerationRequest(
        model="flux-dev",
        prompt="a red fox",
        width=512,
        height=1440,
        steps=50,
        guidance=1.5,
        seed=MAX_SEED,
        output_format=OutputFormat.WEBP,
        safety_tolerance=6,
        prompt_upsampling=True,
        endpoint="flux-dev",
    )


def test_seed_zero_is_kept():
    request = convert.to_generation_request("flux-dev", FluxDevInputs(seed=0), DEV)
    assert request.seed == 0


def test_random_seed_when_absent():
    seeds = [convert.to_generation_request("flux-dev", FluxDevInputs(), DEV).seed for _ in range(8)]
    assert all(isinstance(seed, int) and 0 <= seed <= MAX_SEED for seed in seeds)
    assert len(set(seeds)) == len(seeds)
    # 64 random bits: eight draws all below 2^32 would be a 32-bit generator.
    assert any(seed >= 2**32 for seed in seeds)


def test_output_format_none_means_jpeg():
    inputs = FluxDevInputs(output_format=None)
    assert inputs.output_format is None
    request = convert.to_generation_request("flux-dev", inputs, DEV)
    assert request.output_format is OutputFormat.JPEG


def test_image_prompt_that_is_not_an_image_is_refused_naming_it():
    from fluxserve.images.inputs import ImageReader

    inputs = FluxDevInputs(image_prompt="aGVsbG8=")  # base64 of "hello"
    request = convert.to_generation_request("flux-dev", inputs, DEV)
    with pytest.raises(InvalidRequest) as raised:
        convert.with_image_prompt(request, inputs, ImageReader(), DEV)
    assert raised.value.field == "image_prompt"


def test_flux_pro_uses_dev_spec_defaults_and_ignores_interval():
    inputs = FluxProInputs(interval=3, steps=40, guidance=2.5)
    request = convert.to_generation_request("flux-pro", inputs, DEV)
    assert (request.steps, request.guidance, request.endpoint) == (40, 2.5, "flux-pro")


def test_flux_pro_11_uses_the_model_defaults():
    request = convert.to_generation_request("flux-pro-1.1", FluxPro11Inputs(), DEV)
    assert (request.steps, request.guidance) == (28, 3.0)


def test_flux_pro_11_ignores_client_steps_and_guidance():
    inputs = FluxPro11Inputs.model_validate({"steps": 7, "guidance": 4.5})
    request = convert.to_generation_request("flux-pro-1.1", inputs, DEV)
    assert (request.steps, request.guidance) == (28, 3.0)


# -- convert.to_result_response / to_async_response -----------------------------------------


def make_job(status: JobStatus, **fields) -> Job:
    request = GenerationRequest(
        model="flux-dev",
        prompt="a red fox",
        width=512,
        height=256,
        steps=28,
        guidance=3.0,
        seed=MAX_SEED,
        endpoint="flux-dev",
    )
    return Job(id="job-1", request=request, status=status, created_at=1000.0, **fields)


@pytest.mark.parametrize(
    ("status", "progress", "expected"),
    [(JobStatus.QUEUED, 0.0, 0.0), (JobStatus.RUNNING, 0.123456, 0.1235)],
)
def test_in_progress_is_pending(status, progress, expected):
    response = convert.to_result_response(make_job(status, progress=progress), [])
    assert response.model_dump() == {
        "id": "job-1",
        "status": "Pending",
        "result": None,
        "progress": expected,
        "details": None,
        "preview": None,
    }


def test_succeeded_is_ready():
    job = make_job(
        JobStatus.SUCCEEDED, started_at=1002.0, finished_at=1003.5, result_keys=["results/a"]
    )
    urls = ["http://h/files/results/a.jpeg?sig=1", "http://h/other"]
    response = convert.to_result_response(job, urls)
    assert response.status == "Ready"
    assert response.progress == 1.0
    assert response.details is None
    assert response.result == {
        "sample": "http://h/files/results/a.jpeg?sig=1",
        "prompt": "a red fox",
        "seed": MAX_SEED,
        "start_time": 1002.0,
        "end_time": 1003.5,
        "duration": 1.5,
    }


def test_succeeded_without_times_or_urls():
    response = convert.to_result_response(make_job(JobStatus.SUCCEEDED), [])
    assert response.status == "Ready"
    assert response.result["sample"] is None
    assert response.result["start_time"] == response.result["end_time"] == 1000.0
    assert response.result["duration"] == 0.0


def test_failed_is_error_with_message():
    job = make_job(
        JobStatus.FAILED, error_code="generation_failed", error_message="The worker ran out."
    )
    response = convert.to_result_response(job, [])
    assert response.status == "Error"
    assert response.result is None
    assert response.progress is None
    assert response.details == {"code": "generation_failed", "message": "The worker ran out."}


def test_failed_without_message():
    response = convert.to_result_response(make_job(JobStatus.FAILED), [])
    assert response.status == "Error"
    assert response.details == {"code": "failed", "message": "Error"}


def test_cancelled_is_error():
    response = convert.to_result_response(make_job(JobStatus.CANCELLED), [])
    assert response.status == "Error"
    assert response.details == {"code": "cancelled", "message": "Task cancelled"}


@pytest.mark.parametrize(
    ("status", "name"),
    [
        (JobStatus.CONTENT_MODERATED, "Content Moderated"),
        (JobStatus.REQUEST_MODERATED, "Request Moderated"),
    ],
)
def test_moderated(status, name):
    response = convert.to_result_response(make_job(status), [])
    assert response.status == name
    assert response.result is None
    assert response.details == {"code": status.value, "message": name}


def test_every_status_has_a_bfl_name():
    allowed = {"Pending", "Ready", "Error", "Request Moderated", "Content Moderated"}
    assert set(convert.STATUS_NAMES) == set(JobStatus)
    assert set(convert.STATUS_NAMES.values()) <= allowed


def test_async_response_and_not_found():
    response = convert.to_async_response(
        make_job(JobStatus.QUEUED), "https://img.example", PriceTable()
    )
    assert response.model_dump() == {
        "id": "job-1",
        "polling_url": "https://img.example/v1/get_result?id=job-1",
        "cost": 0.0,
        "input_mp": 0.0,
        "output_mp": 0.13,
    }
    assert convert.not_found("nope").model_dump(exclude_none=True) == {
        "id": "nope",
        "status": "Task not found",
    }


# -- through the app: a server that has only flux-dev -----------------------------------------


@pytest.fixture
def dev_only_client(tmp_path: Path, tiny_model_dir: Path) -> Iterator[TestClient]:
    """The app with one model named flux-dev (tiny weights), lifespan not started."""
    settings = Settings(
        model=[str(tiny_model_dir)],
        data_dir=tmp_path / "data",
        worker_mode="thread",
        image_checker="off",  # a dev spec over tiny weights: no checker download offline
    )
    spec = dataclasses.replace(MODEL_SPECS["flux-dev"], name="flux-dev")
    services = build_services(
        settings, models={"flux-dev": ResolvedModel("flux-dev", spec, tiny_model_dir)}
    )
    app = create_app(settings, services)
    yield TestClient(app)  # no `with`: no lifespan, no worker
    services.store.close()


def test_endpoint_without_model_is_404(dev_only_client):
    response = dev_only_client.post("/v1/flux-schnell", json={"prompt": "x"})
    assert response.status_code == 404
    body = response.json()
    assert set(body) == {"detail", "message"}
    assert body["detail"] == body["message"]
    assert "No loaded model serves flux-schnell" in body["message"]
    assert "this server has flux-dev" in body["message"]
    assert "--alias flux-schnell=MODEL" in body["message"]
    assert job_count(dev_only_client) == 0


@pytest.mark.parametrize("endpoint", ["flux-dev", "flux-pro-1.1", "flux-pro"])
def test_dev_model_serves_dev_kind_endpoints(dev_only_client, endpoint):
    response = dev_only_client.post(f"/v1/{endpoint}", json={"prompt": "x"})
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]
    request = dev_only_client.app.state.services.jobs.get(job_id).request
    assert (request.model, request.endpoint) == ("flux-dev", endpoint)
    assert (request.steps, request.guidance) == (28, 3.0)
    body = dev_only_client.get("/v1/get_result", params={"id": job_id}).json()
    assert (body["status"], body["progress"]) == ("Pending", 0.0)
    assert job_count(dev_only_client) == 1


def test_alias_routes_through_the_app(tmp_path: Path, tiny_model_dir: Path):
    settings = Settings(
        model=[str(tiny_model_dir)],
        alias=["flux-schnell=flux-dev"],
        data_dir=tmp_path / "data",
        worker_mode="thread",
        image_checker="off",
    )
    spec = dataclasses.replace(MODEL_SPECS["flux-dev"], name="flux-dev")
    services = build_services(
        settings, models={"flux-dev": ResolvedModel("flux-dev", spec, tiny_model_dir)}
    )
    client = TestClient(create_app(settings, services))
    try:
        response = client.post("/v1/flux-schnell", json={"steps": 30})
        assert response.status_code == 200, response.text
        request = services.jobs.get(response.json()["id"]).request
        assert (request.model, request.endpoint, request.steps) == ("flux-dev", "flux-schnell", 30)
        assert services.router.table()["flux-schnell"] == "flux-dev"
    finally:
        services.store.close()
