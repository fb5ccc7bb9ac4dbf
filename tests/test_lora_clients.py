"""Acceptance for LoRAs (issue 16): fal's client, unchanged, on `fal-ai/flux-lora` and
`fal-ai/flux-2/lora` against `fluxserve serve --model tiny --model tiny-flux2
--allow-private-urls` over HTTPS, with LoRAs made by PEFT and served from a loopback HTTP
server: a LoRA changes the image, scale 0 is the base image, two LoRAs differ from one,
and a LoRA asked for again is not downloaded again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.loras import FileServer, serving
from tests.test_real_clients import TlsServer, assert_image, run_client, step

pytestmark = pytest.mark.process


@pytest.fixture(scope="module")
def lora_server(lora_dir: Path) -> Iterator[FileServer]:
    with serving(lora_dir) as server:
        yield server


@pytest.fixture(scope="module")
def lora_steps(lora_server: FileServer, tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("lora-clients")
    (root / "tls").mkdir()
    server = TlsServer([Path("tiny"), Path("tiny-flux2")], root / "data", root / "tls",
                       extra=("--allow-private-urls",))  # fmt: skip
    try:
        server.wait_ready()
        host = f"127.0.0.1:{server.port}"
        urls = [lora_server.url(f"{name}.safetensors") for name in ("a", "b", "k", "k2")]
        return run_client(server, "run_lora.py", *urls, FAL_KEY="test", FAL_RUN_HOST=host,
                          FAL_QUEUE_RUN_HOST=f"{host}/queue")  # fmt: skip
    finally:
        server.stop()


def digest(steps: dict[str, Any], name: str) -> str:
    result = step(steps, name)
    assert_image(result, (256, 256), "JPEG")
    return result["pixels"]


def test_fal_client_on_flux_lora(lora_steps, lora_server):
    base, one = digest(lora_steps, "flux1 base"), digest(lora_steps, "flux1 one")
    assert one != base
    assert digest(lora_steps, "flux1 one again") == one  # same seed, same LoRA
    assert digest(lora_steps, "flux1 two") not in (base, one)
    assert digest(lora_steps, "flux1 zero") == base  # scale 0: the base image's pixels
    assert digest(lora_steps, "flux1 base again") == base
    assert lora_server.counts["/a.safetensors"] == 1  # asked for four times, downloaded once


def test_fal_client_on_flux2_lora(lora_steps):
    base, one = digest(lora_steps, "flux2 base"), digest(lora_steps, "flux2 one")
    assert one != base
    assert digest(lora_steps, "flux2 two") not in (base, one)
