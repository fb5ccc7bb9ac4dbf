"""Inputs that once made the server answer 500 or fail late: each now gets a clear 4xx."""

from __future__ import annotations

import pytest

from fluxserve.domain import GenerationRequest, OutputFormat
from fluxserve.runtime.postprocess import encode_image, read_metadata
from tests.helpers import job_count

RAW_422 = [
    ('{"guidance": NaN}', "guidance"),
    ('{"guidance": Infinity}', "guidance"),
    ('{"seed": 1e400}', "seed"),
    ('{"output_format": "\\ud800"}', "output_format"),
    ('{"prompt": "a fox \\ud800"}', "prompt"),
    ('{"steps": true}', "steps"),
    ('{"seed": false}', "seed"),
    ('{"width": true}', "width"),
    ('{"guidance": true}', "guidance"),
]


@pytest.mark.parametrize(("body", "field"), RAW_422)
def test_rejected_with_422_naming_the_field(client, body, field):
    before = job_count(client)
    response = client.post(
        "/v1/flux-dev", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert [e["loc"] for e in response.json()["detail"]] == [["body", field]]
    assert job_count(client) == before


def test_null_prompt_is_no_prompt(client):
    response = client.post("/v1/flux-pro-1.1", json={"prompt": None, "width": 256, "height": 256})
    assert response.status_code == 200
    job = client.app.state.services.jobs.get(response.json()["id"])
    assert job.request.prompt == ""


def test_non_ascii_signature_is_forbidden(client):
    response = client.get("/files/results/x/1-0.png", params={"exp": 99999999999, "sig": "é"})
    assert response.status_code == 403


def test_very_long_prompt_fits_in_jpeg_metadata():
    from PIL import Image

    prompt = "山" * 30_000  # 180 kB as JSON escapes; EXIF holds 64 kB
    request = GenerationRequest(
        model="tiny", prompt=prompt, width=64, height=64, steps=1, guidance=None, seed=1
    )
    image = Image.new("RGB", (64, 64))
    from fluxserve.runtime.postprocess import generation_metadata

    for fmt in (OutputFormat.JPEG, OutputFormat.WEBP):
        meta = read_metadata(encode_image(image, fmt, generation_metadata(request, True)))
        assert meta["prompt_truncated"] is True
        assert prompt.startswith(meta["prompt"])
        assert len(meta["prompt"]) > 1000
    png = read_metadata(encode_image(image, OutputFormat.PNG, generation_metadata(request, True)))
    assert png["prompt"] == prompt
