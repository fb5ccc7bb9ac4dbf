"""Acceptance: unmodified real client libraries against a real `fluxserve serve` over HTTPS.

One TLS server (the tiny models: text-to-image, Kontext and Fill; a throwaway CA from
trustme) serves the whole module. Each
client library runs in its own subprocess, pointed at the server the way its users point it
anywhere else (docs: ../shared/docs/api-compat.md §1.9, §2.8, §3, §4):

- `openai`: OPENAI_BASE_URL, OPENAI_API_KEY, SSL_CERT_FILE;
- `fal_client`: FAL_KEY, FAL_RUN_HOST, FAL_QUEUE_RUN_HOST (read at import time), SSL_CERT_FILE;
- `blackforest` (BFL's SDK): `BFLClient(base_url=...)`, REQUESTS_CA_BUNDLE.

Each script (tests/clients/run_*.py) runs named steps and prints one JSON line; the tests
below check the values the clients handed back.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from fluxserve.jobs import imageprep
from fluxserve.specs import MODEL_SPECS
from tests.helpers import LiveServer

pytestmark = pytest.mark.process

# The dev extra installs these; a missing one is an error, never a silent skip.
import blackforest  # noqa: E402,F401
import fal_client  # noqa: E402,F401
import openai  # noqa: E402,F401
import trustme  # noqa: E402

CLIENTS = Path(__file__).parent / "clients"
SCRIPT_TIMEOUT = 150  # each step inside a script has its own, shorter limit
PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


class TlsServer(LiveServer):
    """`fluxserve serve --tls-cert --tls-key` on 127.0.0.1, trusted through a test CA."""

    def __init__(self, models: list[Path], data_dir: Path, tls_dir: Path,
                 extra: tuple[str, ...] = ()) -> None:  # fmt: skip
        ca = trustme.CA()
        server_cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_file = tls_dir / "ca.pem"
        self.cert_file = tls_dir / "server-chain.pem"
        self.key_file = tls_dir / "server-key.pem"
        ca.cert_pem.write_to_path(self.ca_file)
        for index, blob in enumerate(server_cert.cert_chain_pems):
            blob.write_to_path(self.cert_file, append=index > 0)
        server_cert.private_key_pem.write_to_path(self.key_file)

        args = ["--data-dir", str(data_dir)]
        for model in models:
            args += ["--model", str(model)]
        args += ["--tls-cert", str(self.cert_file), "--tls-key", str(self.key_file), *extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXSERVE_")}
        verify = ssl.create_default_context(cafile=str(self.ca_file))
        super().__init__(args, tls_dir / "server.log", scheme="https", verify=verify, env=env)


@pytest.fixture(scope="module")
def tls_server(
    tiny_model_dir: Path,
    tiny_kontext_dir: Path,
    tiny_fill_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TlsServer]:
    root = tmp_path_factory.mktemp("real-clients")
    (root / "tls").mkdir()
    models = [tiny_model_dir, tiny_kontext_dir, tiny_fill_dir]
    server = TlsServer(models, root / "data", root / "tls")
    try:
        server.wait_ready()
    except BaseException:
        server.stop()
        raise
    yield server
    log = server.log_tail()
    code = server.stop()
    assert code is not None, f"the server did not stop within 30 s of SIGINT:\n{log}"
    assert code == 0, f"the server exited with {code} after SIGINT:\n{log}"


def client_env(server: TlsServer, **extra: str) -> dict[str, str]:
    """A clean environment: no proxies, no real credentials, only the test CA trusted."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("FLUXSERVE_", "OPENAI_", "FAL_", "BFL_"))
        and name not in PROXY_VARIABLES
    }
    ca = str(server.ca_file)
    env.update(SSL_CERT_FILE=ca, REQUESTS_CA_BUNDLE=ca, CURL_CA_BUNDLE=ca)
    env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    env.update(extra)
    return env


def run_client(server: TlsServer, script: str, *args: str, **env: str) -> dict[str, Any]:
    """Run one client script; its steps by name."""
    try:
        done = subprocess.run(
            [sys.executable, str(CLIENTS / script), *args],
            env=client_env(server, **env),
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"{script} ran past {SCRIPT_TIMEOUT} s\nstderr:\n{str(exc.stderr)[-3000:]}\n"
            f"server log:\n{server.log_tail()}"
        ) from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        pytest.fail(
            f"{script} exited with {done.returncode}\nstdout:\n{done.stdout[-2000:]}\n"
            f"stderr:\n{done.stderr[-4000:]}\nserver log:\n{server.log_tail()}"
        )
    return json.loads(lines[-1])["steps"]


def step(steps: dict[str, Any], name: str) -> dict[str, Any]:
    """A step's result; fails with what the client raised when the step did not succeed."""
    result = steps[name]
    if not result["ok"]:
        shown = {key: value for key, value in result.items() if key != "traceback"}
        pytest.fail(
            f"step {name!r}: {result['error']}\n{json.dumps(shown, indent=1, default=str)[:4000]}"
            f"\n{result.get('traceback', '')}"
        )
    return result


def assert_image(info: dict[str, Any], size: tuple[int, int], fmt: str) -> None:
    assert info.get("status_code", 200) == 200, info
    assert tuple(info["size"]) == size, info
    assert info["format"] == fmt, info


# --- OpenAI ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openai_steps(tls_server: TlsServer) -> dict[str, Any]:
    return run_client(
        tls_server,
        "run_openai.py",
        OPENAI_BASE_URL=f"{tls_server.base}/v1",
        OPENAI_API_KEY="test",
    )


def test_openai_models_list_names_the_served_model(openai_steps):
    models = step(openai_steps, "models")
    assert "tiny" in models["ids"], models
    assert set(models["objects"]) == {"model"}
    assert all(isinstance(created, int) for created in models["created"])


def test_openai_b64_json(openai_steps):
    result = step(openai_steps, "b64_json")
    assert result["count"] == 1
    assert result["has_b64"] == [True]
    assert result["has_url"] == [False]
    assert isinstance(result["created"], int)
    assert abs(result["created"] - time.time()) < 600
    assert_image(result["images"][0], (256, 256), "PNG")


def test_openai_url_is_https_and_downloads(openai_steps, tls_server):
    result = step(openai_steps, "url")
    assert result["count"] == 1
    assert result["has_b64"] == [False]
    (url,) = result["urls"]
    assert url.startswith(tls_server.base + "/"), url
    (download,) = result["downloads"]
    assert download["content_type"] == "image/png", download
    assert_image(download, (256, 256), "PNG")


def test_openai_extra_body_seed_is_reproducible(openai_steps):
    first = step(openai_steps, "seed_7_first")["images"][0]
    again = step(openai_steps, "seed_7_again")["images"][0]
    other = step(openai_steps, "seed_8")["images"][0]
    assert_image(first, (256, 256), "PNG")
    assert first["sha256"] == again["sha256"], "seed 7 twice gave different bytes"
    assert first["sha256"] != other["sha256"], "seeds 7 and 8 gave the same bytes"


def test_openai_n_2_gives_two_different_images(openai_steps):
    result = step(openai_steps, "n_2")
    assert result["count"] == 2
    for image in result["images"]:
        assert_image(image, (256, 256), "PNG")
    assert result["images"][0]["sha256"] != result["images"][1]["sha256"]


def test_openai_output_format_jpeg(openai_steps):
    result = step(openai_steps, "jpeg")
    assert_image(result["images"][0], (256, 256), "JPEG")


def test_openai_invalid_n_is_an_openai_shaped_error(openai_steps):
    result = step(openai_steps, "error_n_11")
    assert result["raised"] in {"BadRequestError", "UnprocessableEntityError"}, result
    assert result["status_code"] in {400, 422}, result
    body = result["body"]  # the SDK unwraps {"error": {...}}
    assert isinstance(body, dict), result
    assert {"message", "type", "param", "code"} <= set(body), body
    assert body["param"] == "n", body
    assert body["message"], body


# The picture run_openai.py edits (96x64) and the size tiny-kontext makes from its shape.
EDIT_SIZE = (96, 64)
KONTEXT_SIZE = imageprep.edit_size(MODEL_SPECS["tiny-kontext"], None, [Image.new("RGB", EDIT_SIZE)])


def test_openai_edit_one_image_is_a_kontext_edit(openai_steps):
    result = step(openai_steps, "edit_one")
    assert result["count"] == 1, result
    assert result["has_url"] == [False]
    assert result["revised_prompts"] == ["paint the sky purple"]
    assert abs(result["created"] - time.time()) < 600
    assert KONTEXT_SIZE[0] > KONTEXT_SIZE[1]  # the picture's landscape shape
    assert_image(result["images"][0], KONTEXT_SIZE, "PNG")


def test_openai_edit_a_list_of_two_images(openai_steps):
    result = step(openai_steps, "edit_two")
    assert result["count"] == 1, result
    assert_image(result["images"][0], (256, 256), "PNG")


def test_openai_edit_with_a_mask_fills_at_the_image_size(openai_steps):
    result = step(openai_steps, "edit_mask")
    assert result["count"] == 1, result
    assert_image(result["images"][0], EDIT_SIZE, "PNG")


def test_openai_edit_bytes_on_a_text_to_image_model_answers_a_link(openai_steps, tls_server):
    result = step(openai_steps, "edit_bytes_url")
    (url,) = result["urls"]
    assert url.startswith(tls_server.base + "/"), url
    (download,) = result["downloads"]
    assert download["content_type"] == "image/png", download
    assert_image(download, EDIT_SIZE, "PNG")  # image-to-image keeps the input's size


def test_openai_edit_mask_of_another_size_is_a_bad_request(openai_steps):
    result = step(openai_steps, "edit_error_mask_size")
    assert result["raised"] == "BadRequestError", result
    assert result["status_code"] == 400, result
    body = result["body"]
    assert isinstance(body, dict), result
    assert {"message", "type", "param", "code"} <= set(body), body
    assert body["param"] == "mask", body
    assert "96x64" in body["message"], body


def test_openai_edit_list_arrives_whole(openai_steps):
    # Two listed images and a mask: refused, counting both images the SDK sent as image[].
    result = step(openai_steps, "edit_error_two_images_and_mask")
    assert result["raised"] == "BadRequestError", result
    assert result["status_code"] == 400, result
    assert result["body"]["param"] == "image", result
    assert "got 2" in result["body"]["message"], result


# --- fal.ai ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fal_steps(tls_server: TlsServer) -> dict[str, Any]:
    host = f"127.0.0.1:{tls_server.port}"
    return run_client(
        tls_server,
        "run_fal.py",
        FAL_KEY="test",
        FAL_RUN_HOST=host,
        FAL_QUEUE_RUN_HOST=f"{host}/queue",
    )


OUTPUT_KEYS = {"images", "timings", "seed", "has_nsfw_concepts", "prompt"}
LOG_LEVELS = {"STDERR", "STDOUT", "ERROR", "INFO", "WARN", "DEBUG"}


def assert_fal_output(result: dict[str, Any], count: int, size: tuple[int, int], fmt: str) -> None:
    assert set(result["keys"]) >= OUTPUT_KEYS, result["keys"]
    assert len(result["images"]) == count, result
    assert result["has_nsfw_concepts"] == [False] * count, result
    assert isinstance(result["timings"]["inference"], int | float), result["timings"]
    assert result["timings"]["inference"] >= 0
    content_type = f"image/{fmt.lower()}"
    for image, fetched in zip(result["images"], result["fetched"], strict=True):
        assert (image["width"], image["height"]) == size, image
        assert image["content_type"] == content_type, image
        assert_image(fetched, size, fmt)


def test_fal_run_answers_the_output_object(fal_steps, tls_server):
    result = step(fal_steps, "run_schnell")
    assert_fal_output(result, 1, (256, 256), "JPEG")
    assert result["seed"] == 42
    assert result["prompt"] == "a red fox in fresh snow"
    assert result["url_schemes"][0].startswith(tls_server.base[:40]), result["url_schemes"]
    assert result["fetched"][0]["content_type"] == "image/jpeg"


def test_fal_num_images_2(fal_steps):
    result = step(fal_steps, "run_num_images")
    assert_fal_output(result, 2, (256, 256), "JPEG")
    assert result["seed"] == 5
    first, second = result["fetched"]
    assert first["sha256"] != second["sha256"], "both images are the same"


def test_fal_sync_mode_returns_data_uris(fal_steps):
    result = step(fal_steps, "run_sync_mode")
    assert_fal_output(result, 1, (256, 256), "PNG")
    assert result["url_schemes"][0].startswith("data:image/png;base64,"), result["url_schemes"]
    assert result["fetched"][0]["mime"] == "image/png"
    assert result["seed"] == 99
    assert result["again"][0]["sha256"] == result["fetched"][0]["sha256"], "same seed, new bytes"


def test_fal_subscribe_with_logs(fal_steps):
    result = step(fal_steps, "subscribe")
    assert len(result["enqueued"]) == 1
    kinds = [event["kind"] for event in result["events"]]
    assert kinds, "on_queue_update never called"
    assert kinds[-1] == "Completed", kinds
    assert set(kinds) <= {"Queued", "InProgress", "Completed"}, kinds
    completed = result["events"][-1]
    assert completed["error"] is None, completed
    assert isinstance(completed["metrics"]["inference_time"], int | float), completed
    for event in result["events"]:
        if event["kind"] == "Queued":
            assert isinstance(event["position"], int), event
            assert event["position"] >= 0
        else:  # with_logs=True: a list of fal log items
            assert isinstance(event["logs"], list), event
            for item in event["logs"]:
                assert isinstance(item["message"], str), item
                assert item["level"] in LOG_LEVELS, item
                datetime.fromisoformat(item["timestamp"])
    assert_fal_output(result, 1, (256, 256), "JPEG")
    assert result["seed"] == 3


def test_fal_submit_status_result(fal_steps, tls_server):
    result = step(fal_steps, "submit_status_result")
    request_id = result["request_id"]
    # The subpath (/v1.1) is used only on submit; the rest lives under owner/alias/requests.
    base = f"{tls_server.base}/queue/fal-ai/flux-pro/requests/{request_id}"
    assert result["response_url"] == base, result
    assert result["status_url"] == base + "/status", result
    assert result["cancel_url"] == base + "/cancel", result
    statuses = result["statuses"]
    assert statuses[-1]["kind"] == "Completed", statuses
    assert statuses[-1]["error"] is None, statuses
    assert statuses[-1]["metrics"]["inference_time"] >= 0, statuses
    assert result["raw_result_status"] == 200
    assert result["raw_result_request_id"] == request_id
    # "square" is fal's 512x512 preset.
    assert_fal_output(result, 1, (512, 512), "JPEG")


def test_fal_validation_error_is_422_naming_the_field(fal_steps):
    result = step(fal_steps, "validation_error")
    assert result["raised"], "51 steps on flux/dev (1-50) was accepted"
    assert result["status_code"] == 422, result
    detail = result["message"]  # fal_client puts body["detail"] here
    assert isinstance(detail, list), result
    assert any(item["loc"][-1] == "num_inference_steps" for item in detail), detail
    assert all({"loc", "msg", "type"} <= set(item) for item in detail), detail


def test_fal_cancel_queued_and_running_jobs(fal_steps):
    result = step(fal_steps, "queue_and_cancel")
    short, long = result["short"], result["long"]
    # Submitted behind a 1024x1024, 50-step job on the only worker: still waiting.
    assert short["before_cancel"]["kind"] == "Queued", short["before_cancel"]
    assert isinstance(short["before_cancel"]["position"], int)
    assert short["before_cancel"]["position"] >= 0
    # The long one was cancelled while it ran (fal: CANCELLATION_REQUESTED for running work).
    assert long["before_cancel"]["kind"] == "InProgress", long["before_cancel"]
    for job in (short, long):
        last = job["statuses"][-1]
        # A cancelled request ends COMPLETED with an error (fal has no CANCELLED status) ...
        assert last["kind"] == "Completed", job["statuses"]
        assert last["error"], job["statuses"]
        assert last["error_type"], job["statuses"]
        # ... and fetching its result answers an error code, which fal_client raises.
        assert job["result"]["raised"], job["result"]
        assert 400 <= job["result"]["status_code"] < 500, job["result"]


def test_fal_kontext_dev_with_a_data_uri_image(fal_steps):
    """An image_url sent as a data: URI is edited by the Kontext model, sync and queued."""
    result = step(fal_steps, "kontext_dev_data_uri")
    assert KONTEXT_SIZE[0] > KONTEXT_SIZE[1]  # match_input: the picture's landscape shape
    assert_fal_output(result, 1, KONTEXT_SIZE, "PNG")
    assert result["seed"] == 12
    assert result["prompt"] == "paint the sky purple"
    queued = result["queued"]
    assert len(result["enqueued"]) == 1, result["enqueued"]
    assert_fal_output(queued, 1, KONTEXT_SIZE, "PNG")
    assert queued["seed"] == 12
    sync_image, queued_image = result["fetched"][0], queued["fetched"][0]
    assert sync_image["sha256"] == queued_image["sha256"], "same seed and image, new bytes"


# --- Black Forest Labs ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def bfl_steps(tls_server: TlsServer) -> dict[str, Any]:
    return run_client(tls_server, "run_blackforest.py", tls_server.base, BFL_API_KEY="test")


def test_blackforest_sync_generate(bfl_steps, tls_server):
    result = step(bfl_steps, "sync_dev")
    assert result["seed"] == 1234
    assert result["prompt"] == "a lighthouse at dawn, watercolour"
    assert result["sample_prefix"].startswith(tls_server.base + "/"), result
    assert result["download"]["content_type"] == "image/jpeg"
    assert_image(result["download"], (256, 256), "JPEG")


def test_blackforest_async_submit_and_poll(bfl_steps, tls_server):
    result = step(bfl_steps, "async_pro_png")
    assert result["polling_url"].startswith(tls_server.base + "/v1/get_result?id="), result
    assert result["final_status"] == "Ready", result
    assert set(result["statuses"]) <= {"Pending", "Ready"}, result
    assert result["seed"] == 77
    assert_image(result["download"], (320, 256), "PNG")
