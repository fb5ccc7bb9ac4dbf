"""Helpers shared by tests: waiting and polling, and a live `fluxserve serve` process."""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import sqlalchemy as sa
from fastapi.testclient import TestClient
from PIL import Image

if TYPE_CHECKING:
    from collections.abc import Iterator

    from fluxserve.config import Settings
    from fluxserve.domain import Job

# The console script of the venv running the tests.
FLUXSERVE = str(Path(sys.executable).with_name("fluxserve"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def idle_app(settings: Settings) -> Iterator[TestClient]:
    """For a fixture to ``yield from``: the app without its lifespan (no worker starts, so
    submitted jobs stay queued), its store closed afterwards."""
    from fluxserve.api.app import create_app

    app = create_app(settings)
    yield TestClient(app)
    app.state.services.store.close()


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
    from fluxserve.store.tables import jobs

    with client.app.state.services.store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(jobs)).scalar_one()


def job_ids(client: TestClient) -> set[str]:
    """The ids in the job table of a test client's server."""
    from fluxserve.store.tables import jobs

    with client.app.state.services.store.engine.connect() as conn:
        return set(conn.execute(sa.select(jobs.c.id)).scalars())


def only_job(client: TestClient) -> Job:
    """The one job a test client's server has stored."""
    (job_id,) = job_ids(client)
    return client.app.state.services.jobs.get(job_id)


def assert_openai_error(response, status: int, param: str | None, code: str | None) -> str:
    """OpenAI's error body; returns its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str)
    assert error["message"]
    return error["message"]


def wait_for(condition, what: str, timeout: float = 60.0):
    """``condition()``'s first truthy result, polled every 10 ms; fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.01)
    raise AssertionError(f"{what}: not seen within {timeout} s")


class LiveServer:
    """`fluxserve serve ARGS --port PORT` on a free 127.0.0.1 port, in its own process group
    (so a test can kill it like a crash), its output appended to ``log``."""

    def __init__(
        self,
        args: list[str],
        log: Path,
        *,
        scheme: str = "http",
        verify: ssl.SSLContext | bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.base = f"{scheme}://127.0.0.1:{self.port}"
        self.log_path = log
        self.log = log.open("ab")
        self.proc = subprocess.Popen(
            [FLUXSERVE, "serve", *args, "--port", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self.http = httpx.Client(base_url=self.base, verify=verify, timeout=10)

    def log_tail(self, chars: int = 4000) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_ready(self, timeout: float = 120) -> dict:
        """Polls GET /readyz until 200 and returns its body; fails, with the log's tail, when
        the server exits first or is not ready within ``timeout``."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"the server exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                response = self.http.get("/readyz")
                if response.status_code == 200:
                    return response.json()
                last = f"{response.status_code} {response.text[:200]}"
            except httpx.TransportError as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise AssertionError(f"GET /readyz not 200 in {timeout} s ({last}):\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL to the whole process group, as a crash would."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, grace: float = 30) -> int | None:
        """Ctrl-C, then close; the exit code, or None when it had to be killed after
        ``grace`` seconds."""
        self.http.close()  # first: an open keep-alive connection would hold up the shutdown
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    self.kill()
                    return None
            return self.proc.returncode
        finally:
            self.close()

    def close(self) -> None:
        self.http.close()
        self.log.close()
