"""Shared by the client scripts: named steps with a time limit each, one JSON line at the end.

Each script configures its client library only the way a user would (environment variables,
constructor arguments) and never patches it. A step that raises is recorded with the error
and the script goes on, so one run reports every step.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import signal
import ssl
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import httpx
from PIL import Image


class StepTimeout(Exception):
    """A step ran past its time limit."""


def _on_alarm(signum: int, frame: object) -> None:
    raise StepTimeout("the step ran past its time limit")


def describe_error(exc: BaseException) -> dict[str, Any]:
    """The error as data: its class, message, and whatever HTTP details the library kept."""
    info: dict[str, Any] = {
        "error": f"{type(exc).__name__}: {exc}"[:2000],
        "type": type(exc).__name__,
    }
    status = getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    if status is None and response is not None:
        status = getattr(response, "status_code", None)
    if status is not None:
        info["status_code"] = status
    for name in ("body", "error_type", "message"):
        value = getattr(exc, name, None)
        if value is not None:
            info[name] = value if isinstance(value, dict | list | int | float) else str(value)
    if response is not None:
        with contextlib.suppress(Exception):
            info["response_text"] = response.text[:2000]
        with contextlib.suppress(Exception):
            info["response_headers"] = dict(response.headers)
    return info


class Steps:
    """Runs named steps, each under a SIGALRM time limit, and collects their results."""

    def __init__(self) -> None:
        self.results: dict[str, dict[str, Any]] = {}
        signal.signal(signal.SIGALRM, _on_alarm)

    def run(self, name: str, fn: Callable[[], dict[str, Any]], timeout: float = 30.0) -> bool:
        start = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            # Some clients print progress; stdout carries only the JSON summary.
            with contextlib.redirect_stdout(sys.stderr):
                value = fn()
        except Exception as exc:
            signal.setitimer(signal.ITIMER_REAL, 0)
            result = {"ok": False, **describe_error(exc)}
            result["traceback"] = traceback.format_exc()[-3000:]
            traceback.print_exc(file=sys.stderr)
        else:
            signal.setitimer(signal.ITIMER_REAL, 0)
            result = {"ok": True, **value}
        result["seconds"] = round(time.monotonic() - start, 3)
        self.results[name] = result
        return result["ok"]

    def emit(self) -> None:
        sys.stdout.write(json.dumps({"steps": self.results}, default=str) + "\n")
        sys.stdout.flush()


def image_info(data: bytes) -> dict[str, Any]:
    """Decode with Pillow: what a user would look at."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return {
            "size": list(image.size),
            "format": image.format,
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
        }


def data_uri(uri: str) -> tuple[str, bytes]:
    """`data:<mime>;base64,<payload>` → (mime, bytes)."""
    head, _, payload = uri.partition(",")
    if not head.startswith("data:") or not head.endswith(";base64"):
        raise ValueError(f"not a base64 data URI: {uri[:60]!r}")
    return head[len("data:") : -len(";base64")], base64.b64decode(payload, validate=True)


def ca_context() -> ssl.SSLContext:
    """Trust exactly the test CA, as every client was told to through SSL_CERT_FILE."""
    return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])


def download(url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """GET an image URL over verified HTTPS; its status, content type and decoded image."""
    response = httpx.get(url, headers=headers, verify=ca_context(), timeout=20)
    info: dict[str, Any] = {
        "status_code": response.status_code,
        "content_type": response.headers.get("content-type"),
    }
    if response.status_code == 200:
        info.update(image_info(response.content))
    else:
        info["text"] = response.text[:500]
    return info
