"""The unmodified `fal_client` against fluxserve's fal.ai dialect, sync and queue.

Pointed at the server only through the environment, read by fal_client at import time:
FAL_KEY, FAL_RUN_HOST=127.0.0.1:PORT, FAL_QUEUE_RUN_HOST=127.0.0.1:PORT/queue and
SSL_CERT_FILE (fal_client's scheme is always https). Prints one JSON line:
{"steps": {name: {"ok": ..., ...}}}.
"""

from __future__ import annotations

import base64
import io
import os
import time
from typing import Any

import fal_client
import httpx
from _common import Steps, ca_context, data_uri, describe_error, download, image_info
from PIL import Image

PROMPT = "a red fox in fresh snow"
SMALL = {"width": 256, "height": 256}
LONG = {"image_size": {"width": 1024, "height": 1024}, "num_inference_steps": 50}
EDIT_PROMPT = "paint the sky purple"
EDIT_SIZE = (96, 64)  # the picture Kontext edits, sent as a data: URI


def picture_data_uri() -> str:
    """A 96x64 gradient PNG as a data: URI (fal's clients send image_url as a URL or this)."""
    width, height = EDIT_SIZE
    picture = Image.new("RGB", EDIT_SIZE)
    picture.putdata(
        [
            ((x * 255) // width, (y * 255) // height, 128)
            for y in range(height)
            for x in range(width)
        ]
    )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def output_summary(output: dict[str, Any], fetch: bool = True) -> dict[str, Any]:
    """The output object as the test checks it; image URLs are downloaded like a user would."""
    images = output.get("images") or []
    summary: dict[str, Any] = {
        "keys": sorted(output),
        "seed": output.get("seed"),
        "prompt": output.get("prompt"),
        "timings": output.get("timings"),
        "has_nsfw_concepts": output.get("has_nsfw_concepts"),
        "images": [
            {key: value for key, value in image.items() if key != "url"} for image in images
        ],
        "url_schemes": [str(image.get("url", ""))[:40] for image in images],
    }
    if fetch:
        fetched = []
        for image in images:
            url = image.get("url", "")
            if url.startswith("data:"):
                mime, data = data_uri(url)
                fetched.append({"mime": mime, **image_info(data)})
            else:
                fetched.append(download(url))
        summary["fetched"] = fetched
    return summary


def status_summary(status: fal_client.Status) -> dict[str, Any]:
    summary: dict[str, Any] = {"kind": type(status).__name__}
    if isinstance(status, fal_client.Queued):
        summary["position"] = status.position
    if isinstance(status, fal_client.InProgress | fal_client.Completed):
        summary["logs"] = status.logs
    if isinstance(status, fal_client.Completed):
        summary["metrics"] = status.metrics
        summary["error"] = status.error
        summary["error_type"] = status.error_type
    return summary


def wait_completed(endpoint: str, request_id: str, timeout: float = 25.0) -> list[dict[str, Any]]:
    """Poll fal_client.status (the rebuilt, subpath-less URL) until COMPLETED; every status seen."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = fal_client.status(endpoint, request_id, with_logs=True)
        summary = status_summary(status)
        if not seen or seen[-1]["kind"] != summary["kind"] or summary["kind"] == "Completed":
            seen.append(summary)
        if isinstance(status, fal_client.Completed):
            return seen
        time.sleep(0.05)
    raise TimeoutError(f"{request_id} not COMPLETED after {timeout} s; statuses seen: {seen}")


def handle_urls(handle: fal_client.SyncRequestHandle) -> dict[str, str]:
    return {
        "request_id": handle.request_id,
        "response_url": handle.response_url,
        "status_url": handle.status_url,
        "cancel_url": handle.cancel_url,
    }


def run_schnell() -> dict[str, Any]:
    arguments = {
        "prompt": PROMPT,
        "image_size": SMALL,
        "num_inference_steps": 2,
        "seed": 42,
    }
    return output_summary(fal_client.run("fal-ai/flux/schnell", arguments, timeout=30))


def run_num_images() -> dict[str, Any]:
    arguments = {
        "prompt": PROMPT,
        "image_size": SMALL,
        "num_inference_steps": 2,
        "num_images": 2,
        "seed": 5,
    }
    return output_summary(fal_client.run("fal-ai/flux/dev", arguments, timeout=30))


def run_sync_mode() -> dict[str, Any]:
    arguments = {
        "prompt": PROMPT,
        "image_size": SMALL,
        "num_inference_steps": 2,
        "seed": 99,
        "sync_mode": True,
        "output_format": "png",
    }
    first = output_summary(fal_client.run("fal-ai/flux-1/schnell", arguments, timeout=30))
    again = output_summary(fal_client.run("fal-ai/flux-1/schnell", arguments, timeout=30))
    return {**first, "again": again["fetched"]}


def subscribe() -> dict[str, Any]:
    events: list[fal_client.Status] = []
    enqueued: list[str] = []
    output = fal_client.subscribe(
        "fal-ai/flux/dev",
        arguments={"prompt": PROMPT, "image_size": SMALL, "num_inference_steps": 2, "seed": 3},
        with_logs=True,
        on_enqueue=enqueued.append,
        on_queue_update=events.append,
        client_timeout=30,
    )
    return {
        "enqueued": enqueued,
        "events": [status_summary(event) for event in events],
        **output_summary(output),
    }


def submit_status_result() -> dict[str, Any]:
    endpoint = "fal-ai/flux-pro/v1.1"
    handle = fal_client.submit(endpoint, arguments={"prompt": PROMPT, "image_size": "square"})
    statuses = wait_completed(endpoint, handle.request_id)
    output = fal_client.result(endpoint, handle.request_id)
    # What the JS client needs and fal_client does not surface: the x-fal-request-id header.
    raw = httpx.get(
        handle.response_url,
        headers={"Authorization": f"Key {os.environ['FAL_KEY']}"},
        verify=ca_context(),
        timeout=20,
    )
    return {
        **handle_urls(handle),
        "statuses": statuses,
        "raw_result_status": raw.status_code,
        "raw_result_request_id": raw.headers.get("x-fal-request-id"),
        **output_summary(output),
    }


def result_error(endpoint: str, request_id: str) -> dict[str, Any]:
    try:
        output = fal_client.result(endpoint, request_id)
    except fal_client.FalClientHTTPError as exc:
        return {"raised": True, **describe_error(exc)}
    return {"raised": False, "images": len(output.get("images") or [])}


def queue_and_cancel() -> dict[str, Any]:
    long_endpoint, short_endpoint = "fal-ai/flux/dev", "fal-ai/flux/schnell"
    long = fal_client.submit(long_endpoint, arguments={"prompt": PROMPT, "seed": 1, **LONG})
    short = fal_client.submit(
        short_endpoint,
        arguments={"prompt": PROMPT, "image_size": SMALL, "num_inference_steps": 2},
    )
    # One worker: the small job waits behind the long one.
    short_queued = status_summary(fal_client.status(short_endpoint, short.request_id))
    fal_client.cancel(short_endpoint, short.request_id)
    # Cancel the long one once it runs.
    long_before: dict[str, Any] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        long_before = status_summary(fal_client.status(long_endpoint, long.request_id))
        if long_before["kind"] != "Queued":
            break
        time.sleep(0.05)
    cancelled_at = time.monotonic()
    fal_client.cancel(long_endpoint, long.request_id)
    long_statuses = wait_completed(long_endpoint, long.request_id)
    long_completed_after = round(time.monotonic() - cancelled_at, 3)
    short_statuses = wait_completed(short_endpoint, short.request_id)
    return {
        "long": {
            **handle_urls(long),
            "before_cancel": long_before,
            "statuses": long_statuses,
            "completed_after_cancel_s": long_completed_after,
            "result": result_error(long_endpoint, long.request_id),
        },
        "short": {
            **handle_urls(short),
            "before_cancel": short_queued,
            "statuses": short_statuses,
            "result": result_error(short_endpoint, short.request_id),
        },
    }


def kontext_dev_data_uri() -> dict[str, Any]:
    """fal-ai/flux-kontext/dev with a data: URI image_url: fal.run, then the queue
    (subscribe builds the status URL under the fal-ai/flux-kontext app id)."""
    endpoint = "fal-ai/flux-kontext/dev"
    arguments = {
        "prompt": EDIT_PROMPT,
        "image_url": picture_data_uri(),
        "num_inference_steps": 2,
        "seed": 12,
        "output_format": "png",
    }
    output = output_summary(fal_client.run(endpoint, arguments, timeout=30))
    enqueued: list[str] = []
    queued = fal_client.subscribe(
        endpoint, arguments=arguments, on_enqueue=enqueued.append, client_timeout=30
    )
    return {**output, "enqueued": enqueued, "queued": output_summary(queued)}


def validation_error() -> dict[str, Any]:
    arguments = {"prompt": PROMPT, "image_size": SMALL, "num_inference_steps": 51}
    try:
        fal_client.run("fal-ai/flux/dev", arguments, timeout=30)
    except fal_client.FalClientHTTPError as exc:
        return {"raised": True, **describe_error(exc)}
    return {"raised": False}


def main() -> None:
    steps = Steps()
    steps.run("run_schnell", run_schnell)
    steps.run("run_num_images", run_num_images)
    steps.run("run_sync_mode", run_sync_mode)
    steps.run("subscribe", subscribe)
    steps.run("submit_status_result", submit_status_result)
    steps.run("validation_error", validation_error)
    steps.run("kontext_dev_data_uri", kontext_dev_data_uri)
    steps.run("queue_and_cancel", queue_and_cancel, timeout=45)
    steps.emit()


if __name__ == "__main__":
    main()
