"""Acceptance for FLUX.2 (issue 14): real clients, unchanged, against
`fluxserve serve --model tiny-flux2 --model tiny-flux2-dev` over HTTPS.

BFL's documented HTTP flow, `fal_client` and the `openai` SDK generate and edit with 1, 3
and the route's most reference images on each FLUX.2 route, and download the images at the
requested or derived size (tests/clients/run_flux2.py; the harness is test_real_clients').
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_real_clients import TlsServer, assert_image, run_client, step

pytestmark = pytest.mark.process

FIRST_REFERENCE = (96, 64)  # run_flux2.references(): the derived output size


@pytest.fixture(scope="module")
def flux2_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    root = tmp_path_factory.mktemp("flux2-clients")
    (root / "tls").mkdir()
    # Registry names: the server builds the tiny FLUX.2 models in its data dir.
    server = TlsServer([Path("tiny-flux2"), Path("tiny-flux2-dev")], root / "data", root / "tls")
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    yield server
    assert server.stop() == 0, server.log_tail()


@pytest.fixture(scope="module")
def flux2_steps(flux2_server: TlsServer) -> dict[str, Any]:
    host = f"127.0.0.1:{flux2_server.port}"
    return run_client(
        flux2_server, "run_flux2.py", flux2_server.base,
        FAL_KEY="test", FAL_RUN_HOST=host, FAL_QUEUE_RUN_HOST=f"{host}/queue",
        OPENAI_BASE_URL=f"{flux2_server.base}/v1", OPENAI_API_KEY="test",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("route", "most"),
    [("flux-2-pro", 8), ("flux-2-max", 8), ("flux-2-flex", 8), ("flux-2-pro-preview", 8),
     ("flux-2-klein-4b", 4), ("flux-2-klein-9b", 4), ("flux-2-klein-9b-preview", 4)],
)  # fmt: skip
def test_bfl_http_flow_on_each_flux2_route(flux2_steps, route, most):
    made = step(flux2_steps, f"bfl {route}")
    for count in ("1", "3", str(most)):
        assert_image(made[count]["image"], FIRST_REFERENCE, "JPEG")
        assert made[count]["submitted"]["input_mp"] > 0
    assert_image(made["text"]["image"], (160, 128), "JPEG")
    assert made["text"]["submitted"]["output_mp"] == 0.02


@pytest.mark.parametrize(
    ("endpoint", "most"),
    [("fal-ai/flux-2/edit", 8), ("fal-ai/flux-2-pro/edit", 8), ("fal-ai/flux-2/klein/4b/edit", 4)],
)
def test_fal_client_edits_on_flux2(flux2_steps, endpoint, most):
    made = step(flux2_steps, f"fal {endpoint}")
    for count in ("1", "3", str(most)):
        assert tuple(made[count]["size"]) == FIRST_REFERENCE
        assert_image(made[count]["download"], FIRST_REFERENCE, "JPEG")
    queued = step(flux2_steps, "fal queue klein")
    assert_image(queued["download"], (128, 64), "JPEG")


@pytest.mark.parametrize("name", ["tiny-flux2-dev 1", "tiny-flux2-dev 3", "tiny-flux2-dev 8",
                                  "tiny-flux2 4"])  # fmt: skip
def test_openai_sdk_edits_with_several_images_on_flux2(flux2_steps, name):
    assert_image(step(flux2_steps, f"openai {name}"), FIRST_REFERENCE, "PNG")
