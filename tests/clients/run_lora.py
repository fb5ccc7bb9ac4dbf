"""The unmodified `fal_client` on fal's LoRA endpoints (`fal-ai/flux-lora`,
`fal-ai/flux-2/lora`) with none, one and two LoRAs, and a LoRA at scale 0.

Usage: run_lora.py URL_A URL_B URL_K URL_K2 (the LoRA files, on a loopback server the
fluxserve under test may fetch from). fal_client is pointed at fluxserve by FAL_KEY,
FAL_RUN_HOST, FAL_QUEUE_RUN_HOST and SSL_CERT_FILE. Prints one JSON line of steps.
"""

from __future__ import annotations

import hashlib
import io
import sys
from typing import Any

import fal_client
import httpx
from _common import Steps, ca_context, download
from PIL import Image

BASE = {"prompt": "a red fox", "seed": 11, "image_size": {"width": 256, "height": 256},
        "num_inference_steps": 2}  # fmt: skip


def run(endpoint: str, loras: list[dict[str, Any]]) -> dict[str, Any]:
    """The download, and a digest of its pixels (the file's metadata names the LoRAs)."""
    output = fal_client.subscribe(endpoint, arguments={**BASE, "loras": loras})
    url = output["images"][0]["url"]
    response = httpx.get(url, verify=ca_context(), timeout=20)
    with Image.open(io.BytesIO(response.content)) as image:
        pixels = hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()
    return {**download(url), "pixels": pixels}


def main() -> None:
    a, b, k, k2 = sys.argv[1:5]
    steps = Steps()
    cases = {
        "flux1 base": ("fal-ai/flux-lora", []),
        "flux1 one": ("fal-ai/flux-lora", [{"path": a, "scale": 1.0}]),
        "flux1 one again": ("fal-ai/flux-lora", [{"path": a, "scale": 1.0}]),
        "flux1 two": ("fal-ai/flux-lora", [{"path": a}, {"path": b, "scale": 0.7}]),
        "flux1 zero": ("fal-ai/flux-lora", [{"path": a, "scale": 0.0}]),
        "flux1 base again": ("fal-ai/flux-lora", []),
        "flux2 base": ("fal-ai/flux-2/lora", []),
        "flux2 one": ("fal-ai/flux-2/lora", [{"path": k}]),
        "flux2 two": ("fal-ai/flux-2/lora", [{"path": k}, {"path": k2, "scale": 0.5}]),
    }
    for name, (endpoint, loras) in cases.items():
        steps.run(name, lambda e=endpoint, lo=loras: run(e, lo), timeout=60)
    steps.emit()


if __name__ == "__main__":
    main()
