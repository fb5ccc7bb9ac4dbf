"""The unmodified `blackforest` SDK (Black Forest Labs' own) against fluxserve's BFL dialect.

Usage: run_blackforest.py BASE_URL. The base URL is the SDK's own constructor argument;
TLS trust comes from the environment only (REQUESTS_CA_BUNDLE, the SDK uses requests).
Prints one JSON line: {"steps": {name: {"ok": ..., ...}}}.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import requests
from _common import Steps, image_info
from blackforest import BFLClient
from blackforest.types.general.client_config import ClientConfig

PROMPT = "a lighthouse at dawn, watercolour"


def fetch(url: str) -> dict[str, Any]:
    """Download the signed sample URL with requests, trusting the CA from the environment."""
    response = requests.get(url, timeout=20)
    info: dict[str, Any] = {
        "status_code": response.status_code,
        "content_type": response.headers.get("content-type"),
    }
    if response.status_code == 200:
        info.update(image_info(response.content))
    else:
        info["text"] = response.text[:500]
    return info


def main() -> None:
    base_url = sys.argv[1]
    steps = Steps()
    client = BFLClient(api_key=os.environ.get("BFL_API_KEY", "test"), base_url=base_url)

    def sync_dev() -> dict[str, Any]:
        inputs = {"prompt": PROMPT, "width": 256, "height": 256, "steps": 2, "seed": 1234}
        config = ClientConfig(sync=True, polling_interval=0.1, timeout=30, max_retries=300)
        response = client.generate("flux-dev", inputs, config)
        result = response.result
        return {
            "id": response.id,
            "result_keys": sorted(result),
            "seed": result.get("seed"),
            "prompt": result.get("prompt"),
            "sample_prefix": str(result.get("sample"))[: len(base_url) + 7],
            "download": fetch(result["sample"]),
        }

    def async_pro_png() -> dict[str, Any]:
        inputs = {
            "prompt": PROMPT,
            "width": 320,
            "height": 256,
            "seed": 77,
            "output_format": "png",
        }
        submitted = client.generate("flux-pro-1.1", inputs)
        statuses: list[str] = []
        deadline = time.monotonic() + 30
        task = client.get_task_status(submitted.id)
        while task.status == "Pending" and time.monotonic() < deadline:
            statuses.append(task.status)
            time.sleep(0.1)
            task = client.get_task_status(submitted.id)
        statuses.append(task.status)
        result = task.result or {}
        return {
            "id": submitted.id,
            "polling_url": submitted.polling_url,
            "statuses": sorted(set(statuses)),
            "final_status": task.status,
            "seed": result.get("seed"),
            "download": fetch(result["sample"]) if result.get("sample") else None,
        }

    steps.run("sync_dev", sync_dev, timeout=45)
    steps.run("async_pro_png", async_pro_png, timeout=45)
    steps.emit()


if __name__ == "__main__":
    main()
