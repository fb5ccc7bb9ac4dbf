"""The BFL image endpoints end to end, and the image-input security boundary (issue 4).

Kontext, Fill, Expand and ``image_prompt`` run through the app on the tiny models (one
thread worker serving tiny, tiny-kontext and tiny-fill): submit, poll, download. Every
refusal is a 422 in FastAPI's shape naming the field, answered before any job is queued;
URLs to internal addresses are refused before any connection is opened.
Inputs are 64-128 px and steps are the least each endpoint allows, so this runs in seconds
on a CPU.
"""

from __future__ import annotations

import io
import random
import socket
import struct
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fluxserve.addresses import UrlPolicy
from fluxserve.api.app import create_app
from fluxserve.domain import Task
from fluxserve.images.inputs import ImageReader
from tests.helpers import b64, data_uri, image_bytes, job_count, poll_result, wait_ready

KONTEXT = "/v1/flux-kontext-pro"
KONTEXT_MAX = "/v1/flux-kontext-max"
FILL = "/v1/flux-pro-1.0-fill"
EXPAND = "/v1/flux-pro-1.0-expand"
FILL_STEPS = 15  # the least BFL's fill and expand accept

SQUARE = image_bytes((64, 64))
WIDE = image_bytes((96, 64))


# -- helpers ---------------------------------------------------------------------------------


def mask_bytes(size=(64, 64), box=(16, 16, 48, 48)) -> bytes:
    """A Fill mask: black (keep) with a white (repaint) rectangle."""
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    """A PNG chunk with its length and CRC."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_with_broken_chunk() -> bytes:
    """A 64x64 PNG whose pixel data continues in a chunk with a garbage type: Pillow
    finds out while decoding (it raises SyntaxError there, not OSError)."""
    pixels = zlib.compress(b"".join(b"\0" + bytes(64 * 3) for _ in range(64)))
    half = len(pixels) // 2
    header = struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", pixels[:half])
        + chunk(b"\xbb\x80\xa1C", pixels[half:])
        + chunk(b"IEND", b"")
    )


def png_with_short_header() -> bytes:
    """A PNG whose IHDR chunk is a byte short (Pillow raises ValueError while opening)."""
    header = struct.pack(">IIBBBB", 64, 64, 8, 2, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` 1-bit pixels, with a few bytes of
    pixel data: opening it costs nothing, decoding it would fail as truncated. So a refusal
    that names the size proves it was refused from the header alone."""

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def noise_png(size: tuple[int, int]) -> bytes:
    """A PNG of random pixels: it hardly compresses, so its file size is about 3 bytes a
    pixel."""
    noise = random.Random(0).randbytes(size[0] * size[1] * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", size, noise).save(buffer, format="PNG")
    return buffer.getvalue()


def truncated_png() -> bytes:
    data = image_bytes((96, 64), "PNG")
    start = data.index(b"IDAT")
    return data[: start + (len(data) - start) // 2]  # cut in the middle of the pixel data


def truncated_jpeg() -> bytes:
    data = image_bytes((128, 128), "JPEG")
    start = data.index(b"\xff\xda")  # start of scan: the headers before it stay whole
    return data[: start + (len(data) - start) // 2]


def submit(client: TestClient, endpoint: str, body: dict) -> str:
    response = client.post(endpoint, json=body)
    assert response.status_code == 200, (endpoint, response.text)
    return response.json()["id"]


def run_job(client: TestClient, endpoint: str, body: dict) -> tuple[str, bytes]:
    """Submit, poll until Ready, download: the job id and the result file's bytes."""
    job_id = submit(client, endpoint, body)
    result = poll_result(client, job_id)
    assert result["status"] == "Ready", result
    response = client.get(result["result"]["sample"])
    assert response.status_code == 200, response.text
    return job_id, response.content


def opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def assert_refused(response, field: str, *message_parts: str) -> str:
    """A 422 in FastAPI's shape with one error on ``field``; returns its message."""
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", field], error
    for part in message_parts:
        assert part in error["msg"], (part, error)
    return error["msg"]


def stored_image(client: TestClient, key: str) -> Image.Image:
    return opened(client.app.state.services.storage.get(key))


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Hosts the server opens a connection to. Only 127.0.0.1 (the test's own HTTP server)
    is really reached; any other address fails at once instead of waiting on a timeout."""
    seen: list[str] = []
    real = socket.create_connection

    def spy(address, *args, **kwargs):
        seen.append(address[0])
        if address[0] != "127.0.0.1":
            raise OSError(f"test: no connection to {address[0]}")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", spy)
    return seen


class ImageServer:
    """A local HTTP server: /a.png is a PNG, /to-private redirects to 10.0.0.1."""

    def __init__(self) -> None:
        self.png = image_bytes((80, 64))
        self.requests: list[str] = []
        server_self = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                server_self.requests.append(self.path)
                if self.path == "/a.png":
                    self.send_response(200)
                    self.send_header("content-type", "image/png")
                    self.send_header("content-length", str(len(server_self.png)))
                    self.end_headers()
                    self.wfile.write(server_self.png)
                elif self.path == "/to-private":
                    self.send_response(302)
                    self.send_header("location", "http://10.0.0.1/x.png")
                    self.send_header("content-length", "0")
                    self.end_headers()
                else:
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"


@pytest.fixture
def image_server() -> Iterator[ImageServer]:
    served = ImageServer()
    thread = threading.Thread(target=served.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield served
    served.server.shutdown()
    served.server.server_close()
    thread.join(5)


# -- Kontext ---------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", [KONTEXT, KONTEXT_MAX])
def test_kontext_edits_an_image(image_client, endpoint):
    job_id, data = run_job(
        image_client, endpoint, {"prompt": "make it blue", "input_image": b64(WIDE), "seed": 3}
    )
    image = opened(data)
    assert image.format == "PNG"  # Kontext's default output format
    # About 256*256 pixels (tiny-kontext's base area) at the input's 3:2 shape, on the grid.
    assert image.size == (320, 208)
    job = image_client.app.state.services.jobs.get(job_id)
    assert job.request.model == "tiny-kontext"
    assert job.request.task is Task.EDIT
    assert job.request.endpoint == endpoint.removeprefix("/v1/")
    assert len(job.request.input_keys) == 1
    assert stored_image(image_client, job.request.input_keys[0]).size == (96, 64)


def test_kontext_with_two_reference_images(image_client):
    body = {
        "prompt": "put the first into the second",
        "input_image": b64(SQUARE),
        "input_image_2": data_uri(image_bytes((128, 64), "JPEG"), "image/jpeg"),
        "output_format": "webp",
        "seed": 5,
    }
    job_id, data = run_job(image_client, KONTEXT, body)
    image = opened(data)
    assert image.format == "WEBP"
    assert image.size == (256, 256)  # the first reference's shape: square
    request = image_client.app.state.services.jobs.get(job_id).request
    assert [stored_image(image_client, key).size for key in request.input_keys] == [
        (64, 64),
        (128, 64),
    ]


def test_kontext_without_an_image_draws_from_text(image_client):
    job_id, data = run_job(image_client, KONTEXT, {"prompt": "a lighthouse", "seed": 1})
    assert opened(data).size == (256, 256)
    assert image_client.app.state.services.jobs.get(job_id).request.input_keys == ()


def test_kontext_aspect_ratio(image_client):
    # The aspect ratio wins over the input image's shape.
    body = {"prompt": "x", "input_image": b64(SQUARE), "aspect_ratio": "16:9", "seed": 2}
    _, data = run_job(image_client, KONTEXT, body)
    width, height = opened(data).size
    assert width % 16 == 0
    assert height % 16 == 0
    assert abs(width / height - 16 / 9) < 0.1
    assert abs(width * height - 256 * 256) < 0.1 * 256 * 256


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("3:1", "between 21:9 and 9:21"),
        ("1:3", "between 21:9 and 9:21"),
        ("abc", 'must look like "16:9"'),
        ("16:0", 'must look like "16:9"'),
        ("-16:-9", 'must look like "16:9"'),
        ("16:9.5", 'must look like "16:9"'),
    ],
)
def test_kontext_bad_aspect_ratio(image_client, value, reason):
    before = job_count(image_client)
    response = image_client.post(KONTEXT, json={"prompt": "x", "aspect_ratio": value})
    assert_refused(response, "aspect_ratio", "aspect_ratio", reason)
    assert job_count(image_client) == before


def test_kontext_huge_aspect_ratio_numbers(image_client):
    response = image_client.post(
        KONTEXT, json={"prompt": "x", "aspect_ratio": "1" + "0" * 400 + ":1"}
    )
    assert_refused(response, "aspect_ratio", "at most 32 characters")


def test_kontext_extreme_aspect_ratios_accepted(image_client):
    for ratio in ("21:9", "9:21"):
        response = image_client.post(
            KONTEXT, json={"prompt": "x", "aspect_ratio": ratio, "seed": 1}
        )
        assert response.status_code == 200, (ratio, response.text)
        assert poll_result(image_client, response.json()["id"])["status"] == "Ready"


def test_kontext_needs_a_prompt(image_client):
    for body in ({"input_image": b64(SQUARE)}, {"prompt": "", "input_image": b64(SQUARE)}):
        response = image_client.post(KONTEXT, json=body)
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body", "prompt"]
    assert job_count(image_client) == 0


# -- Fill and Expand -------------------------------------------------------------------------


def test_fill_with_a_mask(image_client):
    body = {
        "image": b64(SQUARE),
        "mask": b64(mask_bytes()),
        "prompt": "a window",
        "steps": FILL_STEPS,
        "guidance": 30,
        "seed": 4,
    }
    job_id, data = run_job(image_client, FILL, body)
    image = opened(data)
    assert image.format == "JPEG"  # BFL's default for fill
    assert image.size == (64, 64)
    request = image_client.app.state.services.jobs.get(job_id).request
    assert request.model == "tiny-fill"
    assert request.task is Task.FILL
    assert (request.steps, request.guidance) == (FILL_STEPS, 30)
    mask = stored_image(image_client, request.mask_key)
    assert mask.getpixel((32, 32)) == 255
    assert mask.getpixel((4, 4)) == 0


def test_fill_with_an_alpha_channel(image_client):
    transparent = image_bytes((64, 64), transparent_box=(0, 0, 32, 64))
    job_id, data = run_job(
        image_client, FILL, {"image": data_uri(transparent), "steps": FILL_STEPS, "seed": 4}
    )
    assert opened(data).size == (64, 64)
    request = image_client.app.state.services.jobs.get(job_id).request
    # The mask is made from the transparency: the transparent left half repaints.
    mask = stored_image(image_client, request.mask_key)
    assert mask.getpixel((10, 30)) == 255
    assert mask.getpixel((50, 30)) == 0
    assert stored_image(image_client, request.input_keys[0]).mode == "RGB"


def test_fill_with_palette_transparency(image_client):
    """A palette PNG marks transparency in its tRNS chunk, not an alpha channel."""
    palette = Image.new("P", (64, 64), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50])
    palette.paste(0, (0, 0, 64, 16))  # the top quarter: colour 0, transparent
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", transparency=0)
    job_id, _ = run_job(image_client, FILL, {"image": b64(buffer.getvalue()), "steps": FILL_STEPS})
    mask = stored_image(
        image_client, image_client.app.state.services.jobs.get(job_id).request.mask_key
    )
    assert mask.getpixel((30, 5)) == 255
    assert mask.getpixel((30, 40)) == 0


def test_fill_needs_a_mask_or_transparency(image_client):
    response = image_client.post(FILL, json={"image": b64(SQUARE), "steps": FILL_STEPS})
    assert_refused(response, "mask", "mask is required", "transparent")
    assert job_count(image_client) == 0


def test_fill_mask_must_match_the_image(image_client):
    body = {"image": b64(SQUARE), "mask": b64(mask_bytes((64, 80))), "steps": FILL_STEPS}
    response = image_client.post(FILL, json=body)
    assert_refused(response, "mask", "mask is 64x80 but the image is 64x64")
    assert job_count(image_client) == 0


@pytest.mark.parametrize(("field", "value"), [("steps", 14), ("steps", 51), ("guidance", 1.0)])
def test_fill_steps_and_guidance_range(image_client, field, value):
    body = {"image": b64(SQUARE), "mask": b64(mask_bytes()), field: value}
    assert image_client.post(FILL, json=body).status_code == 422
    assert job_count(image_client) == 0


def test_expand_grows_the_canvas(image_client):
    body = {"image": b64(SQUARE), "left": 32, "right": 32, "steps": FILL_STEPS, "seed": 6}
    job_id, data = run_job(image_client, EXPAND, body)
    assert opened(data).size == (128, 64)
    request = image_client.app.state.services.jobs.get(job_id).request
    assert (request.width, request.height) == (128, 64)
    # Only the added border repaints.
    mask = stored_image(image_client, request.mask_key)
    assert mask.size == (128, 64)
    assert [mask.getpixel((x, 32)) for x in (5, 40, 64, 90, 120)] == [255, 0, 0, 0, 255]


def test_expand_top_and_bottom(image_client):
    body = {"image": b64(SQUARE), "top": 16, "bottom": 48, "steps": FILL_STEPS, "seed": 6}
    _, data = run_job(image_client, EXPAND, body)
    assert opened(data).size == (64, 128)


def test_expand_needs_a_margin(image_client):
    response = image_client.post(EXPAND, json={"image": b64(SQUARE), "steps": FILL_STEPS})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"][0] == "body"
    assert error["loc"][1] in ("top", "bottom", "left", "right")
    for margin in ("top", "bottom", "left", "right"):
        assert margin in error["msg"]
    over = image_client.post(EXPAND, json={"image": b64(SQUARE), "left": 2049})
    assert_refused(over, "left")
    assert job_count(image_client) == 0


# -- image_prompt: image-to-image on the text-to-image routes ---------------------------------


def test_image_prompt_is_image_to_image(image_client):
    body = {
        "prompt": "same, at dusk",
        "image_prompt": b64(WIDE),
        "strength": 0.5,
        "steps": 2,
        "width": 256,
        "height": 256,
        "output_format": "png",
        "seed": 9,
    }
    job_id, data = run_job(image_client, "/v1/flux-dev", body)
    assert opened(data).size == (256, 256)
    request = image_client.app.state.services.jobs.get(job_id).request
    assert request.model == "tiny"
    assert request.task is Task.IMAGE_TO_IMAGE
    assert request.strength == 0.5
    # Stored at the output's size (cropped to its shape), not the upload's.
    assert stored_image(image_client, request.input_keys[0]).size == (256, 256)


def test_image_prompt_default_strength_on_pro(image_client):
    body = {"prompt": "x", "image_prompt": b64(SQUARE), "width": 256, "height": 256}
    job_id, data = run_job(image_client, "/v1/flux-pro-1.1", body)
    assert opened(data).size == (256, 256)
    request = image_client.app.state.services.jobs.get(job_id).request
    assert request.task is Task.IMAGE_TO_IMAGE
    assert request.strength == 0.95


def test_image_prompt_strength_must_leave_a_step(image_client):
    body = {"prompt": "x", "image_prompt": b64(SQUARE), "strength": 0.5, "steps": 1}
    assert_refused(
        image_client.post("/v1/flux-dev", json={**body, "width": 256, "height": 256}),
        "strength",
        "no step to run",
    )
    over = {**body, "strength": 1.5, "width": 256, "height": 256}
    assert_refused(image_client.post("/v1/flux-dev", json=over), "strength")
    assert job_count(image_client) == 0


# -- seeds -----------------------------------------------------------------------------------


def test_kontext_seed_reproduces(image_client):
    body = {"prompt": "x", "input_image": b64(WIDE), "input_image_2": b64(SQUARE), "seed": 42}
    _, first = run_job(image_client, KONTEXT, body)
    _, again = run_job(image_client, KONTEXT, body)
    _, other = run_job(image_client, KONTEXT, {**body, "seed": 43})
    assert first == again
    assert first != other


def test_fill_seed_reproduces(image_client):
    body = {
        "image": b64(SQUARE),
        "mask": b64(mask_bytes()),
        "steps": FILL_STEPS,
        "output_format": "png",
        "seed": 42,
    }
    _, first = run_job(image_client, FILL, body)
    _, again = run_job(image_client, FILL, body)
    _, other = run_job(image_client, FILL, {**body, "seed": 43})
    assert first == again
    assert first != other


def test_expand_seed_reproduces(image_client):
    body = {"image": b64(SQUARE), "left": 32, "steps": FILL_STEPS, "seed": 11}
    _, first = run_job(image_client, EXPAND, body)
    _, again = run_job(image_client, EXPAND, body)
    assert first == again


# -- refusals of bad files, on every image field ---------------------------------------------

# (endpoint, image field, a body that is valid apart from that field)
IMAGE_FIELDS = [
    (KONTEXT, "input_image", {"prompt": "x"}),
    (KONTEXT_MAX, "input_image_3", {"prompt": "x", "input_image": b64(SQUARE)}),
    (FILL, "image", {"mask": b64(mask_bytes()), "steps": FILL_STEPS}),
    (FILL, "mask", {"image": b64(SQUARE), "steps": FILL_STEPS}),
    (EXPAND, "image", {"left": 32, "steps": FILL_STEPS}),
    ("/v1/flux-dev", "image_prompt", {"prompt": "x", "width": 256, "height": 256, "steps": 1,
                                      "strength": 1}),
]  # fmt: skip


REFUSALS = [
    ("gif", b64(image_bytes((64, 64), "GIF")), "is GIF; JPEG, PNG and WebP are accepted"),
    ("bmp", b64(image_bytes((64, 64), "BMP")), "is BMP; JPEG, PNG and WebP are accepted"),
    ("text", b64(b"just some words, not a picture"), "is not an image file"),
    ("text-data-uri", data_uri(b"<svg></svg>", "image/svg+xml"), "is not an image file"),
    ("not-base64", "%%% not base64 %%%", "must be base64, a data: URI or an http(s) URL"),
    ("data-uri-not-base64", "data:image/png,rawbytes", "data: URI must be base64"),
    ("ftp", "ftp://example.com/a.png", "must be base64, a data: URI or an http(s) URL"),
    ("truncated-png", b64(truncated_png()), "is truncated or corrupt"),
    ("truncated-jpeg", b64(truncated_jpeg()), "is truncated or corrupt"),
    ("broken-chunk-png", b64(png_with_broken_chunk()), "is truncated or corrupt"),
    ("short-header-png", b64(png_with_short_header()), "is not an image file"),
    ("too-narrow", b64(image_bytes((32, 100))), "is 32x100; each side must be at least 64"),
    ("too-low", b64(image_bytes((100, 63))), "is 100x63; each side must be at least 64"),
    # Decompression bombs, refused from the header: decoding would say "truncated".
    ("bomb", b64(png_claiming(30_000, 30_000)), "claims too many pixels"),
    ("over-pixel-limit", b64(png_claiming(5_000, 5_000)), "is 5000x5000; at most 20000000"),
]


@pytest.mark.parametrize(
    ("value", "reason"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_bad_images_refused_on_every_field(image_client, value, reason):
    for endpoint, field, body in IMAGE_FIELDS:
        response = image_client.post(endpoint, json={**body, field: value})
        assert response.status_code == 422, (endpoint, field, response.text)
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body", field], (endpoint, error)
        assert error["msg"].startswith(field), (endpoint, error)
        assert reason in error["msg"], (endpoint, error)
    assert job_count(image_client) == 0
    # Nothing of a refused request was stored.
    assert not (image_client.app.state.services.settings.data_dir / "blobs" / "inputs").exists()


def test_oversized_file_refused(image_settings):
    small = image_settings.model_copy(update={"max_image_bytes": 2048})
    big = noise_png((128, 128))  # noise does not compress below the limit
    assert len(big) > 2048
    fits = image_bytes((64, 64))
    assert len(fits) < 2048
    with TestClient(create_app(small)) as client:
        wait_ready(client)
        for value in (b64(big), data_uri(big)):
            for endpoint, field, body in IMAGE_FIELDS:
                response = client.post(endpoint, json={**body, field: value})
                assert_refused(response, field, field, "larger than 2048 bytes")
        assert job_count(client) == 0
        # Under the limit the same request goes through.
        _, data = run_job(client, KONTEXT, {"prompt": "x", "input_image": b64(fits), "seed": 1})
        assert opened(data).size == (256, 256)


# -- URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("localhost", "loopback"),
        ("10.0.0.1", "private network"),
        ("192.168.1.20", "private network"),
        ("169.254.169.254", "link-local"),
        ("[::1]", "loopback"),
        ("0.0.0.0", "reserved"),
    ],
)
def test_urls_to_internal_addresses_refused_without_a_request(
    image_client, image_server, connections, host, reason
):
    # The local server listens on 127.0.0.1: were a request sent to loopback, it would see it.
    url = f"http://{host}:{image_server.port}/a.png"
    for endpoint, field, body in IMAGE_FIELDS[:3]:
        response = image_client.post(endpoint, json={**body, field: url})
        assert_refused(response, field, field, "refused", reason)
    assert connections == []
    assert image_server.requests == []
    assert job_count(image_client) == 0


def test_redirect_to_a_private_address_refused(image_client, image_server, connections):
    """The first hop (a 'public' host: 127.0.0.1 allowed for the test) is fetched; the
    redirect to 10.0.0.1 is checked like the first URL and refused before connecting."""
    services = image_client.app.state.services
    services.images = ImageReader(
        services.images.limits, UrlPolicy(allowed_addresses=frozenset({"127.0.0.1"}))
    )
    response = image_client.post(
        KONTEXT, json={"prompt": "x", "input_image": f"{image_server.base}/to-private"}
    )
    assert_refused(response, "input_image", "input_image", "private network")
    assert image_server.requests == ["/to-private"]
    assert connections == ["127.0.0.1"]  # never 10.0.0.1
    assert job_count(image_client) == 0

    # The same policy fetches the image itself, and a 404 is a refusal naming the field.
    url = f"{image_server.base}/a.png"
    _, data = run_job(image_client, KONTEXT, {"prompt": "x", "input_image": url, "seed": 1})
    assert opened(data).size == (288, 224)  # the served 80x64 image's shape
    missing = image_client.post(
        KONTEXT, json={"prompt": "x", "input_image": f"{image_server.base}/missing.png"}
    )
    assert_refused(missing, "input_image", "HTTP 404")


def test_private_urls_allowed_by_the_operator(image_settings, image_server, connections):
    settings = image_settings.model_copy(update={"allow_private_urls": True})
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        url = f"{image_server.base}/a.png"
        job_id, data = run_job(client, KONTEXT, {"prompt": "x", "input_image": url, "seed": 1})
        assert opened(data).size == (288, 224)
        request = client.app.state.services.jobs.get(job_id).request
        stored = stored_image(client, request.input_keys[0])
        assert stored.size == (80, 64)
        assert stored.tobytes() == opened(image_server.png).convert("RGB").tobytes()
        _, data = run_job(
            client, FILL, {"image": url, "mask": b64(mask_bytes((80, 64))), "steps": FILL_STEPS}
        )
        assert opened(data).size == (80, 64)
    assert image_server.requests == ["/a.png", "/a.png"]
    assert connections == ["127.0.0.1", "127.0.0.1"]


# -- input images live and die with their job -------------------------------------------------


def test_inputs_stored_with_the_job_and_purged_with_it(image_client, image_settings):
    services = image_client.app.state.services
    blobs = image_settings.data_dir / "blobs"
    kontext_id, _ = run_job(
        image_client,
        KONTEXT,
        {"prompt": "x", "input_image": b64(WIDE), "input_image_2": b64(SQUARE), "seed": 1},
    )
    fill_id, _ = run_job(
        image_client, FILL, {"image": b64(SQUARE), "mask": b64(mask_bytes()), "steps": FILL_STEPS}
    )
    kontext = services.jobs.get(kontext_id)
    fill = services.jobs.get(fill_id)
    assert len(kontext.request.input_keys) == 2
    assert fill.request.mask_key is not None
    keys = [*kontext.request.blob_keys, *kontext.result_keys, *fill.request.blob_keys,
            *fill.result_keys]  # fmt: skip
    assert len(keys) == 6
    for key in keys:
        assert services.storage.get(key)
        assert (blobs / key).is_file(), key
    # The stored input is the upload, losslessly.
    first = stored_image(image_client, kontext.request.input_keys[0])
    assert first.tobytes() == opened(WIDE).convert("RGB").tobytes()

    assert services.jobs.purge_ended(0) == 2
    for job_id in (kontext_id, fill_id):
        body = image_client.get("/v1/get_result", params={"id": job_id}).json()
        assert body["status"] == "Task not found"
        assert services.jobs.get(job_id) is None
        assert not (blobs / "inputs" / job_id).exists()
        assert not (blobs / "results" / job_id).exists()
    for key in keys:
        assert not (blobs / key).exists(), key
    assert not [path for path in blobs.rglob("*") if path.is_file()]


def test_purge_keeps_jobs_within_retention(image_client):
    services = image_client.app.state.services
    job_id, _ = run_job(image_client, KONTEXT, {"prompt": "x", "input_image": b64(SQUARE)})
    assert services.jobs.purge_ended(3600) == 0
    job = services.jobs.get(job_id)
    assert job is not None
    assert services.storage.get(job.request.input_keys[0])


# -- a server without a Kontext or Fill model --------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "body", "kind"),
    [
        (KONTEXT, {"prompt": "x", "input_image": b64(SQUARE)}, "Kontext"),
        (KONTEXT_MAX, {"prompt": "x"}, "Kontext"),
        (FILL, {"image": b64(SQUARE), "mask": b64(mask_bytes())}, "Fill"),
        (EXPAND, {"image": b64(SQUARE), "left": 32}, "Fill"),
    ],
)
def test_image_endpoints_need_their_model(client, endpoint, body, kind):
    response = client.post(endpoint, json=body)
    assert response.status_code == 404, response.text
    message = response.json()["message"]
    assert response.json()["detail"] == message
    assert endpoint.removeprefix("/v1/") in message
    assert f"a {kind} model" in message
    assert "this server has tiny." in message
