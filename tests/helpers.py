"""Helpers shared by tests: waiting and polling."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

from fastapi.testclient import TestClient

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


def poll_result(client, job_id: str, timeout: float = 60.0) -> dict:
    """Poll get_result until the task leaves Pending; returns the last body."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get("/v1/get_result", params={"id": job_id}).json()
        if body["status"] != "Pending":
            return body
        time.sleep(0.01)
    raise AssertionError(f"task {job_id} still Pending after {timeout} s")


SMALL = {"width": 256, "height": 256}
