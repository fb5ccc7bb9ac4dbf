"""fal endpoints that take images: Kontext (dev, pro, max, multi, text-to-image),
FLUX.1 [dev] image-to-image and FLUX.1 Fill (fal-ai/flux-pro/v1/fill).

End-to-end runs go through ``image_client`` (tiny, tiny-kontext and tiny-fill in one thread
worker) with small images and two steps; rejections must answer fal's 422 detail list naming
the field, without creating a job.
"""

from __future__ import annotations

import base64
import io
import time

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from PIL import Image

from fluxserve.domain import GenerationRequest, Task
from fluxserve.jobs.imageprep import DEFAULT_STRENGTH
from fluxserve.store.tables import jobs
from tests.helpers import data_uri, fetch_image, image_bytes

BASE = "http://testserver"
FAST = {"num_inference_steps": 2}
PICTURE = data_uri(image_bytes((96, 64)))  # 3:2 landscape
OTHER_PICTURE = data_uri(image_bytes((96, 64), fmt="JPEG"))
HOLED = data_uri(image_bytes((96, 64), transparent_box=(16, 16, 48, 48)))  # alpha: repaint box


def mask_uri(size: tuple[int, int] = (96, 64), box: tuple = (16, 16, 48, 48)) -> str:
    """A black mask with a white (repaint) rectangle."""
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return data_uri(buffer.getvalue())


# endpoint id -> (app id, a valid body, the model kind's tiny model, task)
ENDPOINTS: dict[str, tuple[str, dict, str, Task]] = {
    "fal-ai/flux-kontext/dev": (
        "fal-ai/flux-kontext",
        {"image_url": PICTURE, **FAST},
        "tiny-kontext",
        Task.EDIT,
    ),
    "fal-ai/flux-pro/kontext": (
        "fal-ai/flux-pro",
        {"image_url": PICTURE},
        "tiny-kontext",
        Task.EDIT,
    ),
    "fal-ai/flux-pro/kontext/max": (
        "fal-ai/flux-pro",
        {"image_url": PICTURE},
        "tiny-kontext",
        Task.EDIT,
    ),
    "fal-ai/flux-pro/kontext/multi": (
        "fal-ai/flux-pro",
        {"image_urls": [PICTURE]},
        "tiny-kontext",
        Task.EDIT,
    ),
    "fal-ai/flux-pro/kontext/max/multi": (
        "fal-ai/flux-pro",
        {"image_urls": [PICTURE]},
        "tiny-kontext",
        Task.EDIT,
    ),
    "fal-ai/flux-pro/kontext/text-to-image": ("fal-ai/flux-pro", {}, "tiny-kontext", Task.EDIT),
    "fal-ai/flux-pro/kontext/max/text-to-image": (
        "fal-ai/flux-pro",
        {},
        "tiny-kontext",
        Task.EDIT,
    ),
    "fal-ai/flux/dev/image-to-image": (
        "fal-ai/flux",
        {"image_url": PICTURE, **FAST},
        "tiny",
        Task.IMAGE_TO_IMAGE,
    ),
    "fal-ai/flux-pro/v1/fill": (
        "fal-ai/flux-pro",
        {"image_url": PICTURE, "mask_url": mask_uri(), **FAST},
        "tiny-fill",
        Task.FILL,
    ),
}
# Kontext on tiny-kontext (base area 256x256): a 3:2 input gives 320x208, no input 256x256.
EXPECTED_SIZE = {
    "fal-ai/flux-pro/kontext/text-to-image": (256, 256),
    "fal-ai/flux-pro/kontext/max/text-to-image": (256, 256),
    "fal-ai/flux/dev/image-to-image": (96, 64),
    "fal-ai/flux-pro/v1/fill": (96, 64),
}


# -- helpers --------------------------------------------------------------------------------


def job_ids(client: TestClient) -> list[str]:
    with client.app.state.services.store.engine.connect() as conn:
        return list(conn.execute(sa.select(jobs.c.id)).scalars().all())


def only_request(client: TestClient) -> GenerationRequest:
    """The request of the one job the app has stored (sync answers carry no request id)."""
    ids = job_ids(client)
    assert len(ids) == 1, ids
    return client.app.state.services.jobs.get(ids[0]).request


def run_sync(client: TestClient, endpoint: str, body: dict) -> dict:
    response = client.post(f"/{endpoint}", json={"prompt": "make it blue", **body})
    assert response.status_code == 200, (endpoint, response.text)
    return response.json()


def inline_bytes(output: dict) -> list[bytes]:
    """The images of a sync_mode output, decoded from their data: URIs."""
    images = []
    for image in output["images"]:
        head, _, payload = image["url"].partition(",")
        assert head == f"data:{image['content_type']};base64", head
        images.append(base64.b64decode(payload, validate=True))
    return images


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def assert_422(response, field: str) -> dict:
    """fal's 422: one detail item whose loc ends with ``field``, its message naming it."""
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list), detail
    assert len(detail) == 1, detail
    (error,) = detail
    assert error["loc"][0] == "body", error
    assert ".".join(str(p) for p in error["loc"][1:]) == field, error
    assert {"loc", "msg", "type"} <= set(error), error
    return error


def assert_rejected(client: TestClient, endpoint: str, body: dict, field: str) -> dict:
    """Rejected with a 422 naming ``field``, and no job created."""
    before = job_ids(client)
    error = assert_422(client.post(f"/{endpoint}", json=body), field)
    assert job_ids(client) == before, "a rejected request created a job"
    return error


def wait_completed(client: TestClient, status_url: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(status_url)
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] == "COMPLETED":
            return body
        time.sleep(0.01)
    raise AssertionError(f"{status_url} not COMPLETED after {timeout} s: {body}")


# -- every endpoint, end to end -------------------------------------------------------------


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_every_image_endpoint_answers_sync(image_client, endpoint):
    _, body, model, task = ENDPOINTS[endpoint]
    output = run_sync(image_client, endpoint, {**body, "seed": 11})
    size = EXPECTED_SIZE.get(endpoint, (320, 208))
    assert output["seed"] == 11
    assert output["prompt"] == "make it blue"
    assert output["has_nsfw_concepts"] == [False]
    (image,) = output["images"]
    assert (image["width"], image["height"]) == size, image
    assert image["url"].startswith(f"{BASE}/files/results/"), image["url"]
    fetched = fetch_image(image_client, image["url"])
    assert fetched.size == size
    assert image["content_type"] == f"image/{fetched.format.lower()}", (image, fetched.format)
    request = only_request(image_client)
    assert request.model == model
    assert request.task is task
    assert request.endpoint == endpoint
    assert (request.width, request.height) == size
    with_images = 0 if endpoint.endswith("text-to-image") else 1
    assert len(request.input_keys) == with_images, request
    assert (request.mask_key is not None) == (task is Task.FILL), request


@pytest.mark.parametrize(
    "endpoint", ["fal-ai/flux-kontext/dev", "fal-ai/flux-pro/kontext/max/multi"]
)
def test_queue_submit_status_result(image_client, endpoint):
    app_id, body, _, _ = ENDPOINTS[endpoint]
    response = image_client.post(f"/queue/{endpoint}", json={"prompt": "p", **body})
    assert response.status_code == 200, response.text
    submitted = response.json()
    request_id = submitted["request_id"]
    root = f"{BASE}/queue/{app_id}/requests/{request_id}"
    assert submitted["status"] == "IN_QUEUE"
    assert submitted["response_url"] == root
    assert submitted["status_url"] == f"{root}/status"
    assert submitted["cancel_url"] == f"{root}/cancel"
    status = wait_completed(image_client, submitted["status_url"])
    assert status["error"] is None, status
    # The same status is served with the subpath in the URL too.
    with_subpath = image_client.get(f"/queue/{endpoint}/requests/{request_id}/status")
    assert with_subpath.status_code == 200, with_subpath.text
    assert with_subpath.json()["status"] == "COMPLETED"
    result = image_client.get(submitted["response_url"])
    assert result.status_code == 200, result.text
    assert result.headers["x-fal-request-id"] == request_id
    (image,) = result.json()["images"]
    assert fetch_image(image_client, image["url"]).size == (image["width"], image["height"])
    # Ended: cancelling is refused as fal refuses it.
    cancel = image_client.put(submitted["cancel_url"])
    assert cancel.status_code == 400
    assert cancel.json() == {"status": "ALREADY_COMPLETED"}


def test_cancel_queued_kontext_request(idle_image_client):
    """A queued Kontext request cancels through its app id (no worker runs here)."""
    response = idle_image_client.post(
        "/queue/fal-ai/flux-kontext/dev", json={"prompt": "p", "image_url": PICTURE}
    )
    assert response.status_code == 200, response.text
    submitted = response.json()
    assert submitted["cancel_url"].startswith(f"{BASE}/queue/fal-ai/flux-kontext/requests/")
    cancel = idle_image_client.put(submitted["cancel_url"])
    assert cancel.status_code == 202, cancel.text
    assert cancel.json() == {"status": "CANCELLATION_REQUESTED"}
    status = idle_image_client.get(submitted["status_url"]).json()
    assert status["status"] == "COMPLETED"
    assert status["error"], status


# -- Kontext ---------------------------------------------------------------------------------


def test_kontext_dev_defaults(idle_image_client):
    """Steps from the model (4 on tiny-kontext), guidance 2.5, png, the input's shape."""
    response = idle_image_client.post(
        "/queue/fal-ai/flux-kontext/dev", json={"prompt": "p", "image_url": PICTURE}
    )
    assert response.status_code == 200, response.text
    request = idle_image_client.app.state.services.jobs.get(response.json()["request_id"]).request
    assert request.steps == 4
    assert request.guidance == 2.5
    assert request.output_format.value == "png"
    assert (request.width, request.height) == (320, 208)
    assert request.task is Task.EDIT
    assert request.acceleration is None  # not sent: the model's tier


def test_kontext_pro_defaults(idle_image_client):
    response = idle_image_client.post(
        "/queue/fal-ai/flux-pro/kontext",
        json={"prompt": "p", "image_url": PICTURE, "safety_tolerance": "1", "enhance_prompt": True},
    )
    assert response.status_code == 200, response.text
    request = idle_image_client.app.state.services.jobs.get(response.json()["request_id"]).request
    assert request.guidance == 3.5
    assert request.steps == 4
    assert request.output_format.value == "jpeg"
    assert request.safety_tolerance == 1  # stricter than the server's most: kept as asked
    assert request.prompt_upsampling is True


@pytest.mark.parametrize(
    ("mode", "size"),
    [
        ("match_input", (320, 208)),
        ("auto", (320, 208)),  # documented: the same as match_input here
        ("1:1", (256, 256)),
        ("16:9", (336, 192)),
        ("9:16", (192, 336)),
        ("4:5", (224, 288)),
    ],
)
def test_kontext_dev_resolution_mode(idle_image_client, mode, size):
    body = {"prompt": "p", "image_url": PICTURE, "resolution_mode": mode}
    response = idle_image_client.post("/queue/fal-ai/flux-kontext/dev", json=body)
    assert response.status_code == 200, response.text
    request = idle_image_client.app.state.services.jobs.get(response.json()["request_id"]).request
    assert (request.width, request.height) == size


@pytest.mark.parametrize(
    ("endpoint", "body", "size"),
    [
        ("fal-ai/flux-pro/kontext", {"image_url": PICTURE, "aspect_ratio": "1:1"}, (256, 256)),
        ("fal-ai/flux-pro/kontext/multi", {"image_urls": [PICTURE], "aspect_ratio": "9:21"},
         (160, 384)),
        ("fal-ai/flux-pro/kontext/text-to-image", {"aspect_ratio": "21:9"}, (384, 160)),
    ],
)  # fmt: skip
def test_kontext_pro_aspect_ratio(idle_image_client, endpoint, body, size):
    response = idle_image_client.post(f"/queue/{endpoint}", json={"prompt": "p", **body})
    assert response.status_code == 200, response.text
    request = idle_image_client.app.state.services.jobs.get(response.json()["request_id"]).request
    assert (request.width, request.height) == size


def test_kontext_multi_with_two_images(image_client):
    """Both references are stored with the job; the first sets the output's shape."""
    portrait = data_uri(image_bytes((64, 96)))
    body = {"prompt": "put them together", "image_urls": [portrait, PICTURE], "seed": 4}
    response = image_client.post("/queue/fal-ai/flux-pro/kontext/multi", json=body)
    assert response.status_code == 200, response.text
    submitted = response.json()
    request_id = submitted["request_id"]
    request = image_client.app.state.services.jobs.get(request_id).request
    assert len(request.input_keys) == 2, request
    assert (request.width, request.height) == (208, 320)
    storage = image_client.app.state.services.storage
    stored = [decoded(storage.get(key)).size for key in request.input_keys]
    assert stored == [(64, 96), (96, 64)]
    wait_completed(image_client, submitted["status_url"])
    result = image_client.get(submitted["response_url"])
    assert result.status_code == 200, result.text
    (image,) = result.json()["images"]
    assert fetch_image(image_client, image["url"]).size == (208, 320)


def test_kontext_input_image_changes_the_output(image_client):
    """Same seed, different input image: different pixels (the image reaches the model)."""
    base = {"num_inference_steps": 2, "seed": 5, "sync_mode": True, "output_format": "png"}
    first = inline_bytes(run_sync(image_client, "fal-ai/flux-kontext/dev",
                                  {**base, "image_url": PICTURE}))  # fmt: skip
    flipped = image_bytes((96, 64))
    flipped_image = decoded(flipped).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buffer = io.BytesIO()
    flipped_image.save(buffer, format="PNG")
    second = inline_bytes(run_sync(image_client, "fal-ai/flux-kontext/dev",
                                   {**base, "image_url": data_uri(buffer.getvalue())}))  # fmt: skip
    assert first != second


# -- image-to-image --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [((128, 64), (128, 64)), ((64, 112), (64, 112)), ((100, 70), (96, 64))],
)
def test_image_to_image_output_follows_the_input_shape(image_client, size, expected):
    body = {"image_url": data_uri(image_bytes(size)), "seed": 2, **FAST}
    output = run_sync(image_client, "fal-ai/flux/dev/image-to-image", body)
    (image,) = output["images"]
    assert (image["width"], image["height"]) == expected
    assert fetch_image(image_client, image["url"]).size == expected
    request = only_request(image_client)
    assert request.task is Task.IMAGE_TO_IMAGE
    assert request.strength == DEFAULT_STRENGTH
    assert request.guidance == 3.5
    stored = image_client.app.state.services.storage.get(request.input_keys[0])
    assert decoded(stored).size == expected


def test_image_to_image_strength_stored(idle_image_client):
    body = {"prompt": "p", "image_url": PICTURE, "strength": 0.5, "num_inference_steps": 10}
    response = idle_image_client.post("/queue/fal-ai/flux/dev/image-to-image", json=body)
    assert response.status_code == 200, response.text
    request = idle_image_client.app.state.services.jobs.get(response.json()["request_id"]).request
    assert request.strength == 0.5
    assert request.steps == 10


def test_image_to_image_strength_leaving_no_step_rejected(image_client):
    body = {"prompt": "p", "image_url": PICTURE, "strength": 0.2, "num_inference_steps": 2}
    error = assert_rejected(image_client, "fal-ai/flux/dev/image-to-image", body, "strength")
    assert "strength" in error["msg"], error
    assert "no step" in error["msg"], error


@pytest.mark.parametrize("strength", [0, 1.5, -0.1, True])
def test_image_to_image_strength_out_of_range(image_client, strength):
    body = {"prompt": "p", "image_url": PICTURE, "strength": strength}
    assert_rejected(image_client, "fal-ai/flux/dev/image-to-image", body, "strength")


def test_image_to_image_seed_reproduces(image_client):
    body = {"image_url": PICTURE, "seed": 77, "sync_mode": True, "output_format": "png", **FAST}
    first = inline_bytes(run_sync(image_client, "fal-ai/flux/dev/image-to-image", body))
    again = inline_bytes(run_sync(image_client, "fal-ai/flux/dev/image-to-image", body))
    other = inline_bytes(
        run_sync(image_client, "fal-ai/flux/dev/image-to-image", {**body, "seed": 78})
    )
    assert first == again, "the same seed gave different bytes"
    assert first != other, "seeds 77 and 78 gave the same bytes"
    assert decoded(first[0]).size == (96, 64)


# -- Fill ------------------------------------------------------------------------------------


def test_fill_with_mask_url(image_client):
    body = {"image_url": PICTURE, "mask_url": mask_uri(), "seed": 3, **FAST}
    output = run_sync(image_client, "fal-ai/flux-pro/v1/fill", body)
    (image,) = output["images"]
    assert fetch_image(image_client, image["url"]).size == (96, 64)
    request = only_request(image_client)
    assert request.task is Task.FILL
    assert request.model == "tiny-fill"
    assert request.steps == 2
    assert request.guidance == 3.0  # tiny-fill's default
    mask = decoded(image_client.app.state.services.storage.get(request.mask_key))
    assert mask.size == (96, 64)
    assert mask.getpixel((20, 20)) == 255, "the mask's white box is not repainted"
    assert mask.getpixel((80, 50)) == 0, "a black mask pixel is repainted"


def test_fill_with_transparent_image_and_no_mask(image_client):
    body = {"image_url": HOLED, "seed": 3, **FAST}
    output = run_sync(image_client, "fal-ai/flux-pro/v1/fill", body)
    (image,) = output["images"]
    assert (image["width"], image["height"]) == (96, 64)
    request = only_request(image_client)
    mask = decoded(image_client.app.state.services.storage.get(request.mask_key))
    assert mask.getpixel((20, 20)) == 255, "the transparent box is not repainted"
    assert mask.getpixel((80, 50)) == 0, "an opaque pixel is repainted"


def test_fill_without_mask_or_transparency_rejected(image_client):
    body = {"prompt": "p", "image_url": PICTURE}
    error = assert_rejected(image_client, "fal-ai/flux-pro/v1/fill", body, "mask_url")
    assert "mask_url is required" in error["msg"], error
    assert "image_url has transparent pixels" in error["msg"], error


def test_fill_mask_of_another_size_rejected(image_client):
    body = {"prompt": "p", "image_url": PICTURE, "mask_url": mask_uri((64, 64), (0, 0, 8, 8))}
    error = assert_rejected(image_client, "fal-ai/flux-pro/v1/fill", body, "mask_url")
    assert "64x64" in error["msg"], error
    assert "96x64" in error["msg"], error


def test_fill_seed_reproduces(image_client):
    body = {"image_url": HOLED, "seed": 9, "sync_mode": True, "output_format": "png", **FAST}
    first = inline_bytes(run_sync(image_client, "fal-ai/flux-pro/v1/fill", body))
    again = inline_bytes(run_sync(image_client, "fal-ai/flux-pro/v1/fill", body))
    other = inline_bytes(run_sync(image_client, "fal-ai/flux-pro/v1/fill", {**body, "seed": 10}))
    assert first == again
    assert first != other


# -- seeds -----------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["fal-ai/flux-kontext/dev", "fal-ai/flux-pro/kontext/multi"])
def test_kontext_seed_reproduces(image_client, endpoint):
    _, body, _, _ = ENDPOINTS[endpoint]
    body = {**body, "seed": 21, "sync_mode": True, "output_format": "png"}
    first = inline_bytes(run_sync(image_client, endpoint, body))
    again = inline_bytes(run_sync(image_client, endpoint, body))
    other = inline_bytes(run_sync(image_client, endpoint, {**body, "seed": 22}))
    assert first == again, "the same seed gave different bytes"
    assert first != other, "seeds 21 and 22 gave the same bytes"
    assert decoded(first[0]).format == "PNG"


def test_num_images_on_kontext(image_client):
    body = {"image_url": PICTURE, "num_images": 2, "seed": 1, **FAST}
    output = run_sync(image_client, "fal-ai/flux-kontext/dev", body)
    first, second = output["images"]
    a = image_client.get(first["url"]).content
    b = image_client.get(second["url"]).content
    assert decoded(a).size == decoded(b).size == (320, 208)
    assert a != b


# -- rejections ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "field"),
    [
        ("fal-ai/flux-kontext/dev", "image_url"),
        ("fal-ai/flux-pro/kontext", "image_url"),
        ("fal-ai/flux-pro/kontext/max", "image_url"),
        ("fal-ai/flux-pro/kontext/multi", "image_urls"),
        ("fal-ai/flux-pro/kontext/max/multi", "image_urls"),
        ("fal-ai/flux/dev/image-to-image", "image_url"),
        ("fal-ai/flux-pro/v1/fill", "image_url"),
    ],
)
def test_image_required(image_client, endpoint, field):
    error = assert_rejected(image_client, endpoint, {"prompt": "p"}, field)
    assert error["type"] == "missing", error


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_prompt_required(image_client, endpoint):
    _, body, _, _ = ENDPOINTS[endpoint]
    assert_rejected(image_client, endpoint, body, "prompt")


@pytest.mark.parametrize(
    ("endpoint", "image_field", "value"),
    [
        ("fal-ai/flux-kontext/dev", "image_url", "http://127.0.0.1:9/cat.png"),
        ("fal-ai/flux-pro/kontext", "image_url", "http://127.0.0.1:9/cat.png"),
        ("fal-ai/flux/dev/image-to-image", "image_url", "http://127.0.0.1:9/cat.png"),
        ("fal-ai/flux-pro/v1/fill", "image_url", "http://127.0.0.1:9/cat.png"),
        ("fal-ai/flux-pro/v1/fill", "mask_url", "http://127.0.0.1:9/mask.png"),
    ],
)
def test_loopback_url_refused(image_client, endpoint, image_field, value):
    body = {"prompt": "p", **ENDPOINTS[endpoint][1], image_field: value}
    error = assert_rejected(image_client, endpoint, body, image_field)
    assert error["msg"].startswith(f"{image_field} is refused"), error
    assert "loopback" in error["msg"], error


def test_multi_names_the_refused_item(image_client):
    body = {"prompt": "p", "image_urls": [PICTURE, "http://127.0.0.1:9/b.png"]}
    error = assert_rejected(image_client, "fal-ai/flux-pro/kontext/multi", body, "image_urls.1")
    assert "loopback" in error["msg"], error


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ("not base64 at all!", "image_url"),
        (data_uri(b"plain text, not an image"), "image_url"),
        (data_uri(image_bytes((32, 32))), "image_url"),  # below the 64-pixel minimum side
        ("ftp://example.com/a.png", "image_url"),
    ],
)
def test_bad_image_rejected(image_client, value, field):
    body = {"prompt": "p", "image_url": value}
    error = assert_rejected(image_client, "fal-ai/flux-kontext/dev", body, field)
    assert field in error["msg"], error


@pytest.mark.parametrize(
    ("endpoint", "extra", "field"),
    [
        ("fal-ai/flux-kontext/dev", {"resolution_mode": "7:5"}, "resolution_mode"),
        ("fal-ai/flux-kontext/dev", {"num_inference_steps": 51}, "num_inference_steps"),
        ("fal-ai/flux-kontext/dev", {"guidance_scale": 21}, "guidance_scale"),
        ("fal-ai/flux-kontext/dev", {"num_images": 11}, "num_images"),
        ("fal-ai/flux-kontext/dev", {"output_format": "webp"}, "output_format"),
        ("fal-ai/flux-kontext/dev", {"acceleration": "max"}, "acceleration"),
        ("fal-ai/flux-pro/kontext", {"aspect_ratio": "4:5"}, "aspect_ratio"),
        ("fal-ai/flux-pro/kontext", {"safety_tolerance": 3}, "safety_tolerance"),
        ("fal-ai/flux-pro/kontext", {"safety_tolerance": "7"}, "safety_tolerance"),
        ("fal-ai/flux-pro/kontext/text-to-image", {"aspect_ratio": "2:1"}, "aspect_ratio"),
        ("fal-ai/flux-pro/kontext/multi", {"image_urls": []}, "image_urls"),
        ("fal-ai/flux-pro/kontext/multi", {"image_urls": [PICTURE] * 5}, "image_urls"),
        ("fal-ai/flux-pro/kontext/multi", {"image_urls": PICTURE}, "image_urls"),
        ("fal-ai/flux-pro/v1/fill", {"num_inference_steps": 0}, "num_inference_steps"),
        ("fal-ai/flux-pro/v1/fill", {"guidance_scale": 101}, "guidance_scale"),
        ("fal-ai/flux/dev/image-to-image", {"num_inference_steps": 51}, "num_inference_steps"),
        ("fal-ai/flux/dev/image-to-image", {"seed": -1}, "seed"),
    ],
)
def test_field_rejected(image_client, endpoint, extra, field):
    body = {"prompt": "p", **ENDPOINTS[endpoint][1], **extra}
    assert_rejected(image_client, endpoint, body, field)


def test_unknown_fields_ignored(idle_image_client):
    body = {"prompt": "p", "image_url": PICTURE, "loras": [], "image_size": "square"}
    response = idle_image_client.post("/queue/fal-ai/flux-pro/kontext", json=body)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("endpoint", "what"),
    [
        ("fal-ai/flux-kontext/dev", "Kontext"),
        ("fal-ai/flux-pro/kontext/multi", "Kontext"),
        ("fal-ai/flux-pro/kontext/text-to-image", "Kontext"),
        ("fal-ai/flux-pro/v1/fill", "Fill"),
    ],
)
def test_kind_not_loaded_is_a_clear_error(client, endpoint, what):
    """Only tiny is loaded: the answer says what is missing and what is loaded."""
    body = {"prompt": "p", **ENDPOINTS[endpoint][1]}
    for path in (f"/{endpoint}", f"/queue/{endpoint}"):
        response = client.post(path, json=body)
        assert 400 <= response.status_code < 500, response.text
        assert response.status_code == 404, response.text
        error = response.json()
        assert error["error_type"] == "model_not_available", error
        assert response.headers["x-fal-error-type"] == "model_not_available"
        assert endpoint in error["detail"], error
        assert what in error["detail"], error
        assert "this server has tiny" in error["detail"], error
    assert job_ids(client) == []


def test_image_to_image_served_by_the_text_model(client):
    """Image-to-image needs no special model: tiny (the dev stand-in) serves it."""
    output = run_sync(client, "fal-ai/flux/dev/image-to-image", {"image_url": PICTURE, **FAST})
    (image,) = output["images"]
    assert (image["width"], image["height"]) == (96, 64)
    assert only_request(client).model == "tiny"
