"""The BFL flow through the app: submit -> poll -> download, with a real tiny model."""

from __future__ import annotations

import io

from PIL import Image

from fluxserve.runtime.postprocess import read_metadata
from tests.helpers import SMALL, poll_result


def test_submit_poll_download(client):
    response = client.post(
        "/v1/flux-dev", json={"prompt": "a red fox", "seed": 7, "output_format": "png", **SMALL}
    )
    assert response.status_code == 200
    submitted = response.json()
    assert submitted["polling_url"] == f"http://testserver/v1/get_result?id={submitted['id']}"

    body = poll_result(client, submitted["id"])
    assert body["status"] == "Ready"
    result = body["result"]
    assert result["prompt"] == "a red fox"
    assert result["seed"] == 7
    assert result["end_time"] >= result["start_time"]
    assert result["duration"] >= 0
    assert result["sample"].startswith("http://testserver/files/results/")

    image_response = client.get(result["sample"])
    assert image_response.status_code == 200
    assert image_response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(image_response.content))
    assert image.size == (256, 256)
    meta = read_metadata(image_response.content)
    assert meta["prompt"] == "a red fox"
    assert meta["seed"] == 7
    assert meta["ai_generated"] == "AI generated"
