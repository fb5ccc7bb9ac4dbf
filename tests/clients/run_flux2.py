"""FLUX.2 through three unmodified clients, each configured only as its users do:

- BFL: the HTTP flow BFL's documentation gives (POST with ``x-key``, then poll the returned
  ``polling_url``), with ``requests`` trusting REQUESTS_CA_BUNDLE. BFL's own SDK
  (``blackforest``) refuses model names outside its built-in registry, which has no FLUX.2
  entry yet, so it cannot reach a FLUX.2 route on any server.
- fal: ``fal_client`` (FAL_KEY, FAL_RUN_HOST, FAL_QUEUE_RUN_HOST, SSL_CERT_FILE).
- OpenAI: the ``openai`` SDK (OPENAI_BASE_URL, OPENAI_API_KEY, SSL_CERT_FILE).

Usage: run_flux2.py BASE_URL. Prints one JSON line: {"steps": {name: {"ok": ..., ...}}}.
"""

from __future__ import annotations

import base64
import io
import os
import sys
import time
from typing import Any

import fal_client
import requests
from _common import Steps, data_uri, download, image_info
from openai import OpenAI
from PIL import Image

PROMPT = "put the fox from image 1 on the boat of image 2"


def picture(width: int, height: int, colour: int) -> bytes:
    image = Image.new("RGB", (width, height), (colour, 255 - colour, 128))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def references(count: int) -> list[bytes]:
    """Each a different picture; the first is 96x64, so a derived size is 96x64."""
    return [picture(96 + 16 * i, 64, 30 * i) for i in range(count)]


def bfl_generate(base_url: str, route: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Submit and poll exactly as BFL's docs show; download the sample."""
    headers = {"accept": "application/json", "x-key": os.environ.get("BFL_API_KEY", "test")}
    submitted = requests.post(f"{base_url}/v1/{route}", headers=headers, json=inputs, timeout=20)
    submitted.raise_for_status()
    body = submitted.json()
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline:
        result = requests.get(body["polling_url"], headers=headers, timeout=20).json()
        if result["status"] == "Ready":
            sample = requests.get(result["result"]["sample"], timeout=20)
            return {"submitted": body, "image": image_info(sample.content)}
        if result["status"] not in ("Pending",):
            raise RuntimeError(f"task ended {result['status']}: {result.get('details')}")
        time.sleep(0.05)
    raise TimeoutError("still Pending")


def bfl_route(base_url: str, route: str, most: int) -> dict[str, Any]:
    made: dict[str, Any] = {}
    for count in (1, 3, most):
        named = {
            ("input_image" if i == 0 else f"input_image_{i + 1}"): base64.b64encode(data).decode()
            for i, data in enumerate(references(count))
        }
        made[str(count)] = bfl_generate(base_url, route, {"prompt": PROMPT, "seed": 1, **named})
    made["text"] = bfl_generate(
        base_url, route, {"prompt": PROMPT, "width": 160, "height": 128, "seed": 1}
    )
    return made


def fal_edit(endpoint: str, most: int) -> dict[str, Any]:
    made: dict[str, Any] = {}
    for count in (1, 3, most):
        urls = [
            "data:image/png;base64," + base64.b64encode(data).decode() for data in references(count)
        ]
        output = fal_client.subscribe(endpoint, arguments={"prompt": PROMPT, "image_urls": urls})
        image = output["images"][0]
        made[str(count)] = {"size": [image["width"], image["height"]],
                            "download": download(image["url"])}  # fmt: skip
    return made


def fal_queue() -> dict[str, Any]:
    handle = fal_client.submit("fal-ai/flux-2/klein/4b", arguments={
        "prompt": PROMPT, "image_size": {"width": 128, "height": 64}, "seed": 2,
    })  # fmt: skip
    output = handle.get()
    image = output["images"][0]
    return {"size": [image["width"], image["height"]], "download": download(image["url"])}


def openai_edit(client: OpenAI, model: str, count: int) -> dict[str, Any]:
    files = [(f"ref{i}.png", data, "image/png") for i, data in enumerate(references(count))]
    result = client.images.edit(
        model=model, image=files, prompt=PROMPT, response_format="b64_json",
        extra_body={"seed": 3},
    )  # fmt: skip
    _, data = data_uri("data:image/png;base64," + result.data[0].b64_json)
    return image_info(data)


def main() -> None:
    base_url = sys.argv[1]
    steps = Steps()
    for route, most in (("flux-2-pro", 8), ("flux-2-max", 8), ("flux-2-flex", 8),
                        ("flux-2-pro-preview", 8), ("flux-2-klein-4b", 4),
                        ("flux-2-klein-9b", 4), ("flux-2-klein-9b-preview", 4)):  # fmt: skip
        steps.run(f"bfl {route}", lambda r=route, m=most: bfl_route(base_url, r, m), timeout=90)
    for endpoint, most in (("fal-ai/flux-2/edit", 8), ("fal-ai/flux-2-pro/edit", 8),
                           ("fal-ai/flux-2/klein/4b/edit", 4)):  # fmt: skip
        steps.run(f"fal {endpoint}", lambda e=endpoint, m=most: fal_edit(e, m), timeout=60)
    steps.run("fal queue klein", fal_queue)
    client = OpenAI()
    for model, count in (("tiny-flux2-dev", 1), ("tiny-flux2-dev", 3), ("tiny-flux2-dev", 8),
                         ("tiny-flux2", 4)):  # fmt: skip
        steps.run(f"openai {model} {count}", lambda m=model, c=count: openai_edit(client, m, c))
    steps.emit()


if __name__ == "__main__":
    main()
