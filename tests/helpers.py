"""Helpers shared by tests: waiting and polling."""

from __future__ import annotations

import base64
import io
import socket
import sys
import time
from pathlib import Path

import sqlalchemy as sa
from fastapi.testclient import TestClient
from PIL import Image

# The console script of the venv running the tests.
FLUXSERVE = str(Path(sys.executable).with_name("fluxserve"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"server not ready after {timeout} s: {client.get('/readyz').json()}")


def poll_result(
    client, job_id: str, timeout: float = 60.0, headers: dict[str, str] | None = None
) -> dict:
    """Poll get_result until the task leaves Pending; returns the last body."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get("/v1/get_result", params={"id": job_id}, headers=headers).json()
        if body["status"] != "Pending":
            return body
        time.sleep(0.01)
    raise AssertionError(f"task {job_id} still Pending after {timeout} s")


SMALL = {"width": 256, "height": 256}


def image_bytes(
    size: tuple[int, int] = (96, 64), fmt: str = "PNG", transparent_box: tuple | None = None
) -> bytes:
    """A test picture: a gradient (so resizes and crops show), optionally with a
    transparent rectangle (x0, y0, x1, y1) for alpha-mask tests."""
    width, height = size
    image = Image.new("RGBA" if transparent_box else "RGB", size)
    image.putdata(
        [((x * 255) // width, (y * 255) // height, 128, 255)[: len(image.getbands())]
         for y in range(height) for x in range(width)]
    )  # fmt: skip
    if transparent_box:
        image.paste((0, 0, 0, 0), transparent_box)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def data_uri(data: bytes, content_type: str = "image/png") -> str:
    return f"data:{content_type};base64,{b64(data)}"


def fetch_image(client, url: str) -> Image.Image:
    """The image at a signed result URL of the test client's server."""
    response = client.get(url)
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


def job_count(client: TestClient) -> int:
    """Rows in the job table of a test client's server."""
    from fluxserve.store.sql import jobs

    with client.app.state.services.store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one()


def wait_for(condition, what: str, timeout: float = 60.0):
    """``condition()``'s first truthy result, polled every 10 ms; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.01)
    raise AssertionError(f"{what}: not seen within {timeout} s")
