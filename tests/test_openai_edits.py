"""``POST /v1/images/edits`` over raw HTTP: multipart forms as openai-python sends them.

``image_client`` serves tiny, tiny-kontext and tiny-fill in one thread worker, so every
route an edit can take really runs: Kontext edits, image-to-image on a text-to-image model,
and Fill with a mask. Rejections are checked on an app without a worker (no lifespan): they
are refused before any job is stored, and a request wrongly accepted fails the test rather
than waiting (each such test checks no job was stored).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fluxserve.api.app import create_app
from fluxserve.config import Settings
from fluxserve.domain import Task
from fluxserve.jobs import imageprep
from tests.helpers import assert_openai_error, fetch_image, image_bytes, job_ids, only_job

URL = "/v1/images/edits"
SIZE = (96, 64)  # helpers.image_bytes' default picture
BOX = (16, 16, 48, 48)  # the transparent rectangle of the mask pictures
FAST = {"steps": "2", "response_format": "b64_json"}


# -- helpers --------------------------------------------------------------------------------


def png(size: tuple[int, int] = SIZE, transparent_box: tuple | None = None) -> tuple:
    return ("image.png", image_bytes(size, "PNG", transparent_box), "image/png")


def edit(client: TestClient, fields: dict, files) -> dict:
    response = client.post(URL, data={"prompt": "make it blue", **fields}, files=files)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"created", "data", "output_format"}, body
    assert isinstance(body["created"], int)
    return body


def decode(item: dict) -> Image.Image:
    assert set(item) == {"b64_json", "revised_prompt"}, item.keys()
    image = Image.open(io.BytesIO(base64.b64decode(item["b64_json"], validate=True)))
    image.load()
    return image


def stored_input(client: TestClient, key: str) -> Image.Image:
    image = Image.open(io.BytesIO(client.app.state.services.storage.get(key)))
    image.load()
    return image


def refused(client: TestClient, status: int, param: str | None, code: str | None, **kwargs) -> str:
    """POST an edit that must be refused before a job is stored; the error's message."""
    response = client.post(URL, **kwargs)
    message = assert_openai_error(response, status, param, code)
    assert job_ids(client) == set(), "a refused edit stored a job"
    return message


# -- edits that run --------------------------------------------------------------------------


def test_one_image_is_a_kontext_edit(image_client):
    body = edit(image_client, {**FAST, "seed": "5"}, {"image": png()})
    assert body["output_format"] == "png"
    (item,) = body["data"]
    assert item["revised_prompt"] == "make it blue"
    image = decode(item)
    assert image.format == "PNG"
    # No model named: the first Kontext model, at its own area in the input's shape.
    job = only_job(image_client)
    spec = image_client.app.state.services.router.models["tiny-kontext"]
    reference = Image.open(io.BytesIO(image_bytes()))
    expected = imageprep.edit_size(spec, None, [reference])
    assert expected[0] > expected[1]  # the 3:2 picture's landscape shape
    assert image.size == expected
    assert job.model == "tiny-kontext"
    assert job.request.task is Task.EDIT
    assert job.request.seed == 5
    assert job.request.steps == 2
    assert job.request.strength is None
    assert job.request.mask_key is None
    (key,) = job.request.input_keys
    assert stored_input(image_client, key).size == SIZE


def test_image_list_gives_kontext_two_references(image_client):
    files = [("image[]", png()), ("image[]", png((64, 64)))]
    body = edit(image_client, {**FAST, "model": "tiny-kontext", "size": "256x256"}, files)
    (item,) = body["data"]
    assert decode(item).size == (256, 256)
    job = only_job(image_client)
    assert job.request.task is Task.EDIT
    assert [stored_input(image_client, key).size for key in job.request.input_keys] == [
        SIZE,
        (64, 64),
    ]


def test_mask_transparency_makes_a_fill_at_the_image_size(image_client):
    files = {"image": png(), "mask": png(transparent_box=BOX)}
    body = edit(image_client, FAST, files)
    (item,) = body["data"]
    assert decode(item).size == SIZE
    job = only_job(image_client)
    assert job.model == "tiny-fill"
    assert job.request.task is Task.FILL
    assert (job.request.width, job.request.height) == SIZE
    assert len(job.request.input_keys) == 1
    mask = stored_input(image_client, job.request.mask_key)
    assert mask.size == SIZE
    # Transparent in the mask: repainted (white); opaque: kept (black).
    assert mask.convert("L").getpixel((30, 30)) == 255
    assert mask.convert("L").getpixel((5, 5)) == 0
    assert mask.convert("L").getpixel((80, 50)) == 0


def test_mask_without_alpha_reads_white_as_edit(image_client):
    black = Image.new("RGB", SIZE, "black")
    black.paste((255, 255, 255), (0, 0, 48, 64))
    buffer = io.BytesIO()
    black.save(buffer, format="PNG")
    files = {"image": png(), "mask": ("mask.png", buffer.getvalue(), "image/png")}
    edit(image_client, {**FAST, "model": "tiny-kontext"}, files)  # a mask needs Fill
    job = only_job(image_client)
    assert job.model == "tiny-fill"
    mask = stored_input(image_client, job.request.mask_key).convert("L")
    assert mask.getpixel((10, 10)) == 255
    assert mask.getpixel((80, 10)) == 0


def test_fill_at_an_asked_size(image_client):
    files = {"image": png(), "mask": png(transparent_box=BOX)}
    body = edit(image_client, {**FAST, "size": "256x256"}, files)
    assert decode(body["data"][0]).size == (256, 256)
    job = only_job(image_client)
    assert stored_input(image_client, job.request.mask_key).size == (256, 256)
    assert stored_input(image_client, job.request.input_keys[0]).size == (256, 256)


def test_url_response_format(image_client):
    body = edit(image_client, {"steps": "2", "response_format": "url"}, {"image": png()})
    (item,) = body["data"]
    assert set(item) == {"url", "revised_prompt"}
    assert item["url"].startswith("http://testserver/files/results/")
    image = fetch_image(image_client, item["url"])
    assert image.format == "PNG"
    assert image.size == (
        only_job(image_client).request.width,
        only_job(image_client).request.height,
    )


def test_response_format_defaults_to_url_and_output_format_jpeg(image_client):
    body = edit(image_client, {"steps": "2", "output_format": "jpeg"}, {"image": png()})
    assert body["output_format"] == "jpeg"
    image = fetch_image(image_client, body["data"][0]["url"])
    assert image.format == "JPEG"


def test_n_2_gives_two_images(image_client):
    body = edit(image_client, {**FAST, "n": "2"}, {"image": png()})
    assert len(body["data"]) == 2
    images = [decode(item) for item in body["data"]]
    assert images[0].size == images[1].size
    assert images[0].tobytes() != images[1].tobytes()  # a batch of two, not one twice
    assert only_job(image_client).request.num_images == 2


def test_text_to_image_model_runs_image_to_image(image_client):
    body = edit(image_client, {**FAST, "model": "tiny", "steps": "4"}, {"image": png()})
    assert decode(body["data"][0]).size == SIZE  # the input's size (on the 16 px grid)
    job = only_job(image_client)
    assert job.model == "tiny"
    assert job.request.task is Task.IMAGE_TO_IMAGE
    assert job.request.strength == imageprep.DEFAULT_STRENGTH
    assert len(job.request.input_keys) == 1


def test_image_to_image_strength_and_size(image_client):
    fields = {**FAST, "model": "tiny", "steps": "4", "strength": "0.5", "size": "256x256"}
    body = edit(image_client, fields, {"image": png()})
    assert decode(body["data"][0]).size == (256, 256)
    job = only_job(image_client)
    assert job.request.strength == 0.5
    assert stored_input(image_client, job.request.input_keys[0]).size == (256, 256)


def test_openai_fields_are_accepted(image_client):
    fields = {
        **FAST,
        "quality": "high",
        "background": "auto",
        "input_fidelity": "high",
        "output_compression": "80",
        "user": "someone",
        "stream": "false",
        "partial_images": "0",
        "guidance": "2.5",
    }
    edit(image_client, fields, {"image": png()})
    assert only_job(image_client).request.guidance == 2.5


# -- refusals --------------------------------------------------------------------------------


def test_missing_prompt(idle_image_client):
    message = refused(
        idle_image_client, 400, "prompt", "missing", data=FAST, files={"image": png()}
    )
    assert "prompt" in message


def test_missing_image(idle_image_client):
    message = refused(
        idle_image_client,
        400,
        "image",
        "invalid_request",
        data={"prompt": "p", **FAST},
        files={"other": png()},
    )
    assert "image" in message


def test_image_sent_as_text(idle_image_client):
    refused(
        idle_image_client,
        400,
        "image",
        "invalid_request",
        data={"prompt": "p", "image": "https://example.com/a.png"},
        files={"x": png()},
    )


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("n", "101", "less_than_equal"),
        ("n", "11", "invalid_request"),  # past --max-images-per-request (10)
        ("n", "two", "int_parsing"),
        ("size", "100x100", "size_value"),
        ("size", "big", "size_format"),
        ("response_format", "file", "literal_error"),
        ("output_format", "gif", "literal_error"),
        ("stream", "true", "streaming"),
        ("strength", "0", "greater_than"),
        ("input_fidelity", "medium", "literal_error"),
        ("steps", "0", "greater_than_equal"),
    ],
)
def test_bad_field_is_a_400_naming_it(idle_image_client, field, value, code):
    data = {"prompt": "p", field: value}
    refused(idle_image_client, 400, field, code, data=data, files={"image": png()})


def test_mismatched_mask(idle_image_client):
    files = {"image": png(), "mask": png((64, 64), transparent_box=BOX)}
    message = refused(
        idle_image_client, 400, "mask", "invalid_request", data={"prompt": "p"}, files=files
    )
    assert "64x64" in message
    assert "96x64" in message


def test_mismatched_mask_without_alpha(idle_image_client):
    files = {"image": png(), "mask": png((64, 64))}
    refused(idle_image_client, 400, "mask", "invalid_request", data={"prompt": "p"}, files=files)


def test_not_an_image_file(idle_image_client):
    files = {"image": ("notes.txt", b"hello, not a picture", "text/plain")}
    message = refused(
        idle_image_client, 400, "image", "invalid_request", data={"prompt": "p"}, files=files
    )
    assert "not an image" in message


def test_not_an_image_mask(idle_image_client):
    files = {"image": png(), "mask": ("mask.png", b"\x89PNG nope", "image/png")}
    refused(idle_image_client, 400, "mask", "invalid_request", data={"prompt": "p"}, files=files)


def test_mask_with_several_images(idle_image_client):
    files = [("image[]", png()), ("image[]", png()), ("mask", png(transparent_box=BOX))]
    message = refused(
        idle_image_client, 400, "image", "invalid_request", data={"prompt": "p"}, files=files
    )
    assert "one image" in message


def test_several_images_on_a_text_to_image_model(idle_image_client):
    files = [("image[]", png()), ("image[]", png())]
    refused(
        idle_image_client,
        400,
        "image",
        "invalid_request",
        data={"prompt": "p", "model": "tiny"},
        files=files,
    )


def test_more_than_ten_images(idle_image_client):
    files = [("image[]", png((64, 64)))] * 11
    message = refused(
        idle_image_client, 400, "image", "invalid_request", data={"prompt": "p"}, files=files
    )
    assert "10" in message


def test_unknown_model(idle_image_client):
    message = refused(
        idle_image_client,
        400,
        "model",
        "invalid_request",
        data={"prompt": "p", "model": "dall-e-2"},
        files={"image": png()},
    )
    assert "tiny-kontext" in message


def test_no_kontext_model_names_the_loaded_ones(idle_client):
    message = refused(
        idle_client,
        400,
        "model",
        "invalid_request",
        data={"prompt": "p"},
        files={"image": png()},
    )
    assert "tiny" in message
    assert "Kontext" in message


def test_no_fill_model_for_a_mask(idle_client):
    files = {"image": png(), "mask": png(transparent_box=BOX)}
    message = refused(
        idle_client,
        400,
        "model",
        "invalid_request",
        data={"prompt": "p", "model": "tiny"},
        files=files,
    )
    assert "tiny" in message
    assert "Fill" in message


def test_fill_model_without_mask_needs_transparency(idle_image_client):
    refused(
        idle_image_client,
        400,
        "mask",
        "invalid_request",
        data={"prompt": "p", "model": "tiny-fill"},
        files={"image": png()},
    )


def test_json_body_is_refused(idle_image_client):
    refused(idle_image_client, 400, None, "invalid_content_type", json={"prompt": "p"})


def test_broken_multipart(idle_image_client):
    headers = {"content-type": "multipart/form-data"}  # no boundary
    refused(
        idle_image_client, 400, None, "invalid_form", content=b"--abc\r\nnonsense", headers=headers
    )


# -- upload size -----------------------------------------------------------------------------


@pytest.fixture
def small_limit_client(tmp_path: Path, tiny_kontext_dir: Path) -> Iterator[TestClient]:
    """Images of at most 1 KiB: an edit form may then be 11 KiB plus 1 MiB."""
    settings = Settings(
        model=[str(tiny_kontext_dir)],
        data_dir=tmp_path / "small",
        worker_mode="thread",
        max_image_bytes=1024,
    )
    app = create_app(settings)
    yield TestClient(app)
    app.state.services.store.close()


FORM_LIMIT = 11 * 1024 + 1024 * 1024


def test_declared_content_length_over_the_limit_is_413(small_limit_client):
    files = {"image": ("big.png", b"\0" * (FORM_LIMIT + 1), "image/png")}
    message = refused(
        small_limit_client, 413, "image", "request_too_large", data={"prompt": "p"}, files=files
    )
    assert str(FORM_LIMIT) in message


def test_chunked_body_over_the_limit_is_413(small_limit_client):
    boundary = "xyz"

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
            'filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        for _ in range(20):
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    refused(
        small_limit_client, 413, "image", "request_too_large", content=chunks(), headers=headers
    )


def test_a_form_within_the_limit_is_read(small_limit_client):
    # Under the body limit, but the file is over the per-image limit: named, not a 413.
    files = {"image": ("big.png", b"\0" * 4096, "image/png")}
    message = refused(
        small_limit_client, 400, "image", "invalid_request", data={"prompt": "p"}, files=files
    )
    assert "1024 bytes" in message


def test_edits_form_is_documented(idle_image_client):
    operation = idle_image_client.get("/openapi.json").json()["paths"][URL]["post"]
    schema = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"image", "image[]", "mask", "prompt", "n", "size", "strength"} <= set(
        schema["properties"]
    )
    assert schema["required"] == ["prompt"]
