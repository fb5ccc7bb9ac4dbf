"""Moderation outcomes through each dialect, end to end (issue 5).

Real servers (a thread worker serving the tiny models) with the real checks: the term list
in the API, and tiny transformers classifiers (tests/tiny_aux.py) in the worker whose bias
decides the verdict. Each dialect reports a refused prompt, a refused input and blocked
outputs its own way: BFL polls to "Request Moderated" / "Content Moderated", fal answers 422
or flags black images in has_nsfw_concepts, OpenAI answers 400 or leaves images out.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fluxserve.api.app import create_app
from fluxserve.config import Settings
from fluxserve.domain import JobStatus
from tests.helpers import SMALL, b64, fetch_image, image_bytes, poll_result, wait_ready
from tests.tiny_aux import make_image_checker, make_text_classifier

FAST = {**SMALL, "steps": 2, "seed": 1}  # BFL
FAL_FAST = {"image_size": {"width": 256, "height": 256}, "num_inference_steps": 2, "seed": 1}
OPENAI_FAST = {"size": "256x256", "steps": 2, "seed": 1}
BLOCKED_PROMPT = "child porn in a park"  # on the default term list
CLAMP_NOTE = "safety_tolerance 6 was lowered to 2"


# -- servers ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nsfw_checker(tmp_path_factory) -> Path:
    """An image checker that blocks every image."""
    return make_image_checker(tmp_path_factory.mktemp("aux") / "nsfw", unsafe_bias=10.0)


@pytest.fixture(scope="module")
def normal_checker(tmp_path_factory) -> Path:
    """An image checker that allows every image."""
    return make_image_checker(tmp_path_factory.mktemp("aux") / "normal", unsafe_bias=-10.0)


@pytest.fixture(scope="module")
def unsafe_classifier(tmp_path_factory) -> Path:
    """A prompt classifier that refuses every prompt."""
    return make_text_classifier(tmp_path_factory.mktemp("aux") / "unsafe", unsafe_bias=10.0)


@contextmanager
def serve(tmp_path: Path, models: list[Path], **safety) -> Iterator[TestClient]:
    settings = Settings(
        model=[str(m) for m in models], data_dir=tmp_path / "data", worker_mode="thread", **safety
    )
    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture
def blocking_client(tmp_path, tiny_model_dir, tiny_kontext_dir, nsfw_checker):
    """tiny and tiny-kontext, with an image checker that blocks everything."""
    with serve(tmp_path, [tiny_model_dir, tiny_kontext_dir], image_checker=str(nsfw_checker)) as c:
        yield c


@pytest.fixture
def allowing_client(tmp_path, tiny_model_dir, normal_checker):
    """tiny with an image checker that allows everything; tolerance at most 2 (default)."""
    with serve(tmp_path, [tiny_model_dir], image_checker=str(normal_checker)) as c:
        yield c


@pytest.fixture
def permissive_client(tmp_path, tiny_model_dir, normal_checker):
    """As allowing_client, but clients may ask for safety_tolerance up to 6."""
    with serve(
        tmp_path, [tiny_model_dir], image_checker=str(normal_checker), max_safety_tolerance=6
    ) as c:
        yield c


def job_of(client: TestClient, job_id: str):
    job = client.app.state.services.jobs.get(job_id)
    assert job is not None
    return job


def record_submits(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> list:
    """The jobs the server creates from now on (OpenAI's answers carry no job id)."""
    jobs = client.app.state.services.jobs
    created = []

    def submit(*args, **kwargs):
        created.append(real_submit(*args, **kwargs))
        return created[-1]

    real_submit = jobs.submit
    monkeypatch.setattr(jobs, "submit", submit)
    return created


def is_black(image: Image.Image) -> bool:
    return all(extrema == (0, 0) for extrema in image.convert("RGB").getextrema())


def bfl_run(client: TestClient, endpoint: str, body: dict) -> tuple[str, dict]:
    response = client.post(endpoint, json=body)
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]
    return job_id, poll_result(client, job_id)


def refused_verdicts(body: dict) -> list[dict]:
    return body["details"]["verdicts"]


# -- BFL -------------------------------------------------------------------------------------


def test_bfl_term_blocked_prompt_is_request_moderated_without_a_worker(client):
    job_id, body = bfl_run(client, "/v1/flux-dev", {"prompt": BLOCKED_PROMPT, **FAST})
    assert body["status"] == "Request Moderated"
    assert body["result"] is None
    details = body["details"]
    assert details["code"] == "request_moderated"
    assert "child porn" in details["message"]
    (verdict,) = refused_verdicts(body)
    assert verdict["checker"] == "blocked-terms"
    assert verdict["category"] == "blocked_term: child porn"
    assert verdict["point"] == "prompt"
    assert verdict["allowed"] is False
    job = job_of(client, job_id)
    assert job.status is JobStatus.REQUEST_MODERATED
    # Refused in the API: never claimed, nothing generated.
    assert job.result_keys == []
    assert job.started_at is None
    assert job.attempt == 0


def test_bfl_prompt_refused_by_the_classifier_in_the_worker(
    tmp_path, tiny_model_dir, unsafe_classifier
):
    with serve(tmp_path, [tiny_model_dir], prompt_classifier=str(unsafe_classifier)) as client:
        job_id, body = bfl_run(client, "/v1/flux-dev", {"prompt": "a red fox", **FAST})
        job = job_of(client, job_id)
    assert body["status"] == "Request Moderated"
    assert body["details"]["code"] == "request_moderated"
    (verdict,) = refused_verdicts(body)
    assert verdict["checker"] == str(unsafe_classifier)
    assert verdict["point"] == "prompt"
    assert verdict["category"] == "unsafe"
    assert verdict["score"] > 0.99
    assert verdict["tolerance"] == 2
    assert job.started_at is not None  # the worker took it, and refused it before generating
    assert job.result_keys == []


def test_bfl_kontext_input_image_refused(blocking_client):
    job_id, body = bfl_run(
        blocking_client,
        "/v1/flux-kontext-pro",
        {"prompt": "make it blue", "input_image": b64(image_bytes((96, 64)))},
    )
    assert body["status"] == "Request Moderated"
    assert body["details"]["code"] == "request_moderated"
    assert "Input image 1" in body["details"]["message"]
    (verdict,) = refused_verdicts(body)
    assert verdict["point"] == "input:0"
    assert verdict["category"] == "nsfw"
    job = job_of(blocking_client, job_id)
    assert job.request.model == "tiny-kontext"
    assert job.result_keys == []
    assert job.report.blocked_outputs == []


def test_bfl_blocked_output_is_content_moderated(blocking_client):
    job_id, body = bfl_run(blocking_client, "/v1/flux-dev", {"prompt": "a red fox", **FAST})
    assert body["status"] == "Content Moderated"
    assert body["result"] is None  # no sample to fetch
    assert body["details"]["code"] == "content_moderated"
    (verdict,) = refused_verdicts(body)
    assert verdict["point"] == "output:0"
    job = job_of(blocking_client, job_id)
    assert job.status is JobStatus.CONTENT_MODERATED
    assert job.report.blocked_outputs == [0]


def test_bfl_allowed_output_is_ready_with_a_clamp_note(allowing_client, normal_checker):
    job_id, body = bfl_run(
        allowing_client, "/v1/flux-dev", {"prompt": "a red fox", "safety_tolerance": 6, **FAST}
    )
    assert body["status"] == "Ready"
    (note,) = body["details"]["notes"]
    assert note.startswith(CLAMP_NOTE)
    image = fetch_image(allowing_client, body["result"]["sample"])
    assert not is_black(image)  # the real output, not a stand-in
    job = job_of(allowing_client, job_id)
    assert job.request.safety_tolerance == 2
    # The check that ran is recorded even though it allowed the image.
    (verdict,) = job.report.verdicts
    assert verdict["point"] == "output:0"
    assert verdict["allowed"] is True
    assert verdict["category"] == "ok"
    assert verdict["checker"] == str(normal_checker)
    assert verdict["tolerance"] == 2
    assert job.report.blocked_outputs == []


def test_bfl_default_tolerance_has_no_note(allowing_client):
    _, body = bfl_run(allowing_client, "/v1/flux-dev", {"prompt": "a red fox", **FAST})
    assert body["status"] == "Ready"
    assert body["details"] is None


def test_bfl_tolerance_6_allowed_when_the_server_allows_it(permissive_client):
    job_id, body = bfl_run(
        permissive_client, "/v1/flux-dev", {"prompt": "a red fox", "safety_tolerance": 6, **FAST}
    )
    assert body["status"] == "Ready"
    assert body["details"] is None  # nothing lowered, nothing to note
    job = job_of(permissive_client, job_id)
    assert job.request.safety_tolerance == 6
    assert [v["tolerance"] for v in job.report.verdicts] == [6]


# -- fal -------------------------------------------------------------------------------------


def test_fal_sync_term_blocked_is_422_content_policy_violation(client):
    response = client.post("/fal-ai/flux/dev", json={"prompt": BLOCKED_PROMPT, **FAL_FAST})
    assert response.status_code == 422
    body = response.json()
    assert body["error_type"] == "content_policy_violation"
    assert response.headers["X-Fal-Error-Type"] == "content_policy_violation"
    assert "child porn" in body["detail"]


def test_fal_queue_term_blocked(client):
    response = client.post("/queue/fal-ai/flux/dev", json={"prompt": BLOCKED_PROMPT, **FAL_FAST})
    assert response.status_code == 200
    submitted = response.json()
    request_id = submitted["request_id"]
    status = client.get(submitted["status_url"])
    assert status.status_code == 200
    status = status.json()
    assert status["status"] == "COMPLETED"  # already ended at submit: no waiting
    assert status["error_type"] == "content_policy_violation"
    assert "child porn" in status["error"]
    result = client.get(submitted["response_url"])
    assert result.status_code == 422
    assert result.json()["error_type"] == "content_policy_violation"
    assert job_of(client, request_id).result_keys == []


def test_fal_blocked_outputs_are_black_and_flagged(blocking_client):
    body = {"prompt": "a red fox", "num_images": 2, "output_format": "png", **FAL_FAST}
    response = blocking_client.post("/fal-ai/flux/dev", json=body)
    assert response.status_code == 200, response.text
    output = response.json()
    assert output["has_nsfw_concepts"] == [True, True]
    assert len(output["images"]) == 2
    for item in output["images"]:
        image = fetch_image(blocking_client, item["url"])
        assert image.size == (256, 256)
        assert is_black(image)


@pytest.mark.parametrize("output_format", ["png", "jpeg"])
def test_fal_sync_mode_blocked_outputs_are_black_data_uris(blocking_client, output_format):
    body = {"prompt": "a red fox", "sync_mode": True, "output_format": output_format, **FAL_FAST}
    response = blocking_client.post("/fal-ai/flux/dev", json=body)
    assert response.status_code == 200, response.text
    output = response.json()
    assert output["has_nsfw_concepts"] == [True]
    (item,) = output["images"]
    prefix = f"data:image/{output_format};base64,"
    assert item["url"].startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(item["url"].removeprefix(prefix))))
    assert image.format == output_format.upper()
    assert is_black(image)


def test_fal_allowed_output_not_flagged(allowing_client):
    body = {"prompt": "a red fox", "output_format": "png", **FAL_FAST}
    response = allowing_client.post("/fal-ai/flux/dev", json=body)
    assert response.status_code == 200, response.text
    output = response.json()
    assert output["has_nsfw_concepts"] == [False]
    assert not is_black(fetch_image(allowing_client, output["images"][0]["url"]))


def test_fal_safety_checker_off_asks_for_the_most_permissive(permissive_client):
    body = {"prompt": "a red fox", "enable_safety_checker": False, **FAL_FAST}
    response = permissive_client.post("/queue/fal-ai/flux/dev", json=body)
    assert response.status_code == 200
    job = job_of(permissive_client, response.json()["request_id"])
    assert job.request.safety_tolerance == 6
    assert job.report.notes == []


def test_fal_safety_checker_off_clamped_by_default(allowing_client):
    body = {"prompt": "a red fox", "enable_safety_checker": False, **FAL_FAST}
    response = allowing_client.post("/queue/fal-ai/flux/dev", json=body)
    assert response.status_code == 200
    job = job_of(allowing_client, response.json()["request_id"])
    assert job.request.safety_tolerance == 2
    (note,) = job.report.notes
    assert note.startswith(CLAMP_NOTE)


# -- OpenAI ----------------------------------------------------------------------------------


def test_openai_term_blocked_is_400_content_policy_violation(client):
    response = client.post("/v1/images/generations", json={"prompt": BLOCKED_PROMPT, **OPENAI_FAST})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "content_policy_violation"
    assert error["param"] == "prompt"
    assert "child porn" in error["message"]


def test_openai_all_outputs_blocked_is_400(blocking_client):
    body = {"prompt": "a red fox", "model": "tiny", "n": 2, **OPENAI_FAST}
    response = blocking_client.post("/v1/images/generations", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "content_policy_violation"
    assert "blocked" in error["message"]
    assert error["param"] is None  # no field of the request was at fault


def test_openai_edit_with_a_refused_input_names_the_image(blocking_client):
    files = {"image": ("in.png", image_bytes((64, 64)), "image/png")}
    data = {"prompt": "make it blue", "steps": "2"}
    response = blocking_client.post("/v1/images/edits", files=files, data=data)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "content_policy_violation"
    assert error["param"] == "image"
    assert "Input image 1" in error["message"]


def test_openai_allowed_has_no_moderation_field(allowing_client, monkeypatch):
    created = record_submits(allowing_client, monkeypatch)
    body = {"prompt": "a red fox", "response_format": "b64_json", **OPENAI_FAST}
    response = allowing_client.post("/v1/images/generations", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert "moderation" not in result
    (item,) = result["data"]
    assert not is_black(Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))))
    (job,) = created
    verdicts = job_of(allowing_client, job.id).report.verdicts
    assert [(v["point"], v["allowed"]) for v in verdicts] == [("output:0", True)]


def test_openai_moderation_low_asks_for_tolerance_6(permissive_client, monkeypatch):
    created = record_submits(permissive_client, monkeypatch)
    body = {"prompt": "a red fox", "moderation": "low", **OPENAI_FAST}
    response = permissive_client.post("/v1/images/generations", json=body)
    assert response.status_code == 200, response.text
    (job,) = created
    job = job_of(permissive_client, job.id)
    assert job.request.safety_tolerance == 6
    assert job.report.notes == []
    assert [v["tolerance"] for v in job.report.verdicts] == [6]


# -- the term list setting -------------------------------------------------------------------


def test_custom_blocked_terms_file(tmp_path, tiny_model_dir):
    terms = tmp_path / "terms.txt"
    terms.write_text("# ours\ndragon\n/fire\\s*breath/\n", encoding="utf-8")
    with serve(tmp_path, [tiny_model_dir], blocked_terms=str(terms)) as client:
        outcomes = {}
        for prompt in ["a DRAGON at dawn", "fire   breathing lizard", "child porn", "dragonfly"]:
            _, body = bfl_run(client, "/v1/flux-dev", {"prompt": prompt, **FAST})
            outcomes[prompt] = body
    assert refused_verdicts(outcomes["a DRAGON at dawn"])[0]["category"] == "blocked_term: dragon"
    fire = refused_verdicts(outcomes["fire   breathing lizard"])[0]
    assert fire["category"] == "blocked_term: /fire\\s*breath/"
    assert fire["checker"] == "blocked-terms"
    # The default list is replaced, not extended; plain terms match whole words only.
    assert outcomes["child porn"]["status"] == "Ready"
    assert outcomes["dragonfly"]["status"] == "Ready"


def test_blocked_terms_off(tmp_path, tiny_model_dir):
    with serve(tmp_path, [tiny_model_dir], blocked_terms="off") as client:
        job_id, body = bfl_run(client, "/v1/flux-dev", {"prompt": "child porn", **FAST})
        job = job_of(client, job_id)
    assert body["status"] == "Ready"  # tiny generates it; no checker ran
    assert body["result"]["sample"]
    assert job.report.verdicts == []
