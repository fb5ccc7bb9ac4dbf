"""The BFL flow through the app: submit -> poll -> download, with a real tiny model."""

from __future__ import annotations

import io

from PIL import Image

from fluxserve.runtime.postprocess import read_metadata
from tests.helpers import SMALL, poll_result, wait_ready


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


def test_readyz_waits_for_the_worker(settings):
    from fastapi.testclient import TestClient

    from fluxserve.api.app import create_app

    app = create_app(settings)
    idle = TestClient(app)  # no lifespan: no worker started
    assert idle.get("/healthz").status_code == 200
    response = idle.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "not ready"
    with TestClient(app) as running:
        wait_ready(running)
        (worker,) = running.get("/readyz").json()["workers"]
        assert worker["models"] == ["tiny"]
        assert worker["alive"]
        assert worker["ready"]


def test_progress_is_reported_while_pending(client):
    job_id = client.post(
        "/v1/flux-dev", json={"width": 384, "height": 384, "steps": 50, "seed": 1}
    ).json()["id"]
    seen = set()
    body = client.get("/v1/get_result", params={"id": job_id}).json()
    while body["status"] == "Pending":
        seen.add(body["progress"])
        body = client.get("/v1/get_result", params={"id": job_id}).json()
    assert body["status"] == "Ready"
    assert any(0 < p < 1 for p in seen), seen


def test_public_url_is_the_base_of_every_link(tmp_path, tiny_model_dir):
    from fastapi.testclient import TestClient

    from fluxserve.api.app import create_app
    from fluxserve.config import Settings

    settings = Settings(
        model=[str(tiny_model_dir)],
        data_dir=tmp_path / "data",
        worker_mode="thread",
        public_url="https://images.example.com/",
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        submitted = client.post("/v1/flux-schnell", json={"seed": 1, **SMALL}).json()
        assert submitted["polling_url"].startswith("https://images.example.com/v1/get_result?id=")
        body = poll_result(client, submitted["id"])
        assert body["result"]["sample"].startswith("https://images.example.com/files/results/")
