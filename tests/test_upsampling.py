"""Prompt upsampling (issue 5): an OpenAI-compatible chat backend or a local causal LM
rewrites the prompt in the worker; every dialect reports the prompt the image was made from.

The chat backend is a loopback ``http.server`` speaking OpenAI's ``/chat/completions`` wire
format, whose answer each test picks (a rewrite, too slow, a 500, broken JSON, a blocked
term...). One app serves every test against it (256x256, one step); the app without a
backend, and the one with a tiny local LM, are built by the tests that need them.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fluxserve.api.app import create_app
from fluxserve.config import Settings
from fluxserve.engine.moderation import NO_UPSAMPLER
from fluxserve.prompting.upsample import (
    MAX_NEW_TOKENS,
    MAX_PROMPT_CHARS,
    ChatUpsampler,
    LocalUpsampler,
    UpsamplingFailed,
    clean,
    system_prompt,
)
from fluxserve.runtime.postprocess import read_metadata
from tests.helpers import SMALL, free_port, poll_result, wait_ready
from tests.tiny_aux import make_tiny_lm

TIMEOUT = 1.0  # the app's --prompt-upsampler-timeout
SLOW = 5.0  # how long the "slow" backend sleeps before answering: well past TIMEOUT
DRIP_BYTES, DRIP_PAUSE = 8, 0.2  # the "drip" answer takes 1.6 s, a byte every 0.2 s
BFL_FAST = {**SMALL, "steps": 1, "output_format": "png"}


def rewrite_of(prompt: str) -> str:
    return f"A detailed photograph of {prompt}, soft morning light"


# -- the fake chat backend ------------------------------------------------------------------------


class ChatBackend:
    """What the loopback chat server answers (``mode``) and what it was sent."""

    def __init__(self) -> None:
        self.mode = "rewrite"
        self.requests: list[dict] = []
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reset(self) -> None:
        self.mode = "rewrite"
        self.requests = []

    def answer(self, body: dict) -> tuple[int, bytes]:
        """(status, response body) for the request ``body``, in the current mode."""
        if self.mode == "error":
            return 500, b'{"error": {"message": "the model crashed"}}'
        if self.mode == "malformed":
            return 200, b'{"choices": [{"message": {"content": "A cut-off'
        if self.mode == "slow":
            time.sleep(SLOW)
        user = next(m["content"] for m in body["messages"] if m["role"] == "user")
        content: str | None = {
            "rewrite": rewrite_of(user),
            "drip": rewrite_of(user),
            "slow": rewrite_of(user),
            "blocked": "lolicon drawing",
            "quoted": f'"{rewrite_of(user)}"\n\nI added the light to set a mood.',
            "empty": '  ""  ',
            "null": None,
        }[self.mode]
        completion = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        return 200, json.dumps(completion).encode()


def _handler(backend: ChatBackend) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            if self.path != "/v1/chat/completions":
                self._send(404, b'{"error": "not found"}')
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            backend.requests.append(body)
            self._send(*backend.answer(body), drip=backend.mode == "drip")

        def _send(self, status: int, payload: bytes, drip: bool = False) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if drip:  # a byte at a time: each read is quick, the whole answer is not
                    for index in range(DRIP_BYTES):
                        self.wfile.write(payload[index : index + 1])
                        self.wfile.flush()
                        time.sleep(DRIP_PAUSE)
                    payload = payload[DRIP_BYTES:]
                self.wfile.write(payload)
            except OSError:  # the client gave up waiting (the "slow" mode)
                pass

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def backend_server() -> Iterator[ChatBackend]:
    backend = ChatBackend()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(backend))
    server.daemon_threads = True  # a "slow" answer still sleeping does not hold teardown
    backend.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield backend
    server.shutdown()
    server.server_close()


@pytest.fixture
def chat(backend_server: ChatBackend) -> ChatBackend:
    backend_server.reset()
    return backend_server


@pytest.fixture(scope="module")
def chat_client(
    backend_server: ChatBackend, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """The app with a thread worker on the tiny model, rewriting through the chat backend."""
    settings = Settings(
        model=[str(tiny_model_dir)],
        data_dir=tmp_path_factory.mktemp("upsampling") / "data",
        worker_mode="thread",
        prompt_upsampler=backend_server.base_url,
        prompt_upsampler_model="test-llm",
        prompt_upsampler_timeout=TIMEOUT,
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def bfl(client: TestClient, body: dict) -> dict:
    """Submit a BFL flux-dev job and poll it to its end."""
    response = client.post("/v1/flux-dev", json={**BFL_FAST, **body})
    assert response.status_code == 200, response.text
    return poll_result(client, response.json()["id"])


# -- end to end through the chat backend ----------------------------------------------------------


def test_bfl_prompt_upsampling_uses_the_rewrite(chat_client, chat):
    body = bfl(chat_client, {"prompt": "a red fox", "prompt_upsampling": True})
    assert body["status"] == "Ready", body
    assert body["result"]["prompt"] == rewrite_of("a red fox")
    assert "details" not in body or body["details"] is None  # no note: the rewrite worked

    (sent,) = chat.requests
    assert sent["model"] == "test-llm"
    assert sent["messages"] == [
        {"role": "system", "content": system_prompt()},
        {"role": "user", "content": "a red fox"},
    ]
    assert sent["max_tokens"] == MAX_NEW_TOKENS * 2


def test_bfl_without_prompt_upsampling_calls_no_backend(chat_client, chat):
    body = bfl(chat_client, {"prompt": "a red fox", "prompt_upsampling": False})
    assert body["status"] == "Ready", body
    assert body["result"]["prompt"] == "a red fox"
    assert chat.requests == []


def test_fal_enhance_prompt(chat_client, chat):
    response = chat_client.post(
        "/fal-ai/flux/dev",
        json={
            "prompt": "a lighthouse",
            "enhance_prompt": True,
            "image_size": {"width": 256, "height": 256},
            "num_inference_steps": 1,
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["prompt"] == rewrite_of("a lighthouse")
    assert [r["messages"][1]["content"] for r in chat.requests] == ["a lighthouse"]


def test_openai_prompt_upsampling_revises_every_image(chat_client, chat):
    response = chat_client.post(
        "/v1/images/generations",
        json={
            "prompt": "two owls",
            "n": 2,
            "size": "256x256",
            "steps": 1,
            "response_format": "b64_json",
            "prompt_upsampling": True,
        },
    )
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert len(data) == 2
    assert [item["revised_prompt"] for item in data] == [rewrite_of("two owls")] * 2
    for item in data:  # the images were made from the rewrite, and say so
        assert read_metadata(base64.b64decode(item["b64_json"]))["prompt"] == rewrite_of("two owls")
    assert len(chat.requests) == 1  # one rewrite per job, not per image


def test_openai_without_prompt_upsampling(chat_client, chat):
    response = chat_client.post(
        "/v1/images/generations", json={"prompt": "two owls", "size": "256x256", "steps": 1}
    )
    assert response.status_code == 200, response.text
    assert [item["revised_prompt"] for item in response.json()["data"]] == ["two owls"]
    assert chat.requests == []


@pytest.mark.parametrize(
    ("output_format", "content_type"), [("png", "image/png"), ("jpeg", "image/jpeg")]
)
def test_image_metadata_carries_the_rewritten_prompt(
    chat_client, chat, output_format, content_type
):
    body = bfl(
        chat_client,
        {
            "prompt": "a red fox",
            "prompt_upsampling": True,
            "output_format": output_format,
            "seed": 3,
        },
    )
    assert body["status"] == "Ready", body
    image = chat_client.get(body["result"]["sample"])
    assert image.status_code == 200
    assert image.headers["content-type"] == content_type
    meta = read_metadata(image.content)
    assert meta["prompt"] == rewrite_of("a red fox")
    assert meta["seed"] == 3


@pytest.mark.parametrize(
    ("mode", "why"),
    [
        ("slow", f"the rewriter did not answer within {TIMEOUT} s"),
        ("error", "the rewriter failed (HTTPStatusError)"),
        ("malformed", "the rewriter failed (JSONDecodeError)"),
        ("empty", "the rewriter answered with an empty prompt"),
        ("null", "the rewriter's answer held no text"),
    ],
)
def test_backend_failure_keeps_the_original_prompt(chat_client, chat, mode, why):
    chat.mode = mode
    body = bfl(chat_client, {"prompt": "a red fox", "prompt_upsampling": True})
    assert body["status"] == "Ready", body
    assert body["result"]["prompt"] == "a red fox"
    assert body["details"]["notes"] == [
        f"prompt upsampling failed ({why}); the prompt was used as sent"
    ]
    assert len(chat.requests) == 1  # it was asked, once
    # The job waited for the rewriter no longer than its timeout, not for the slow answer.
    assert body["result"]["duration"] < SLOW - 1


def test_rewritten_prompt_is_checked_by_the_term_list(chat_client, chat):
    chat.mode = "blocked"
    body = bfl(chat_client, {"prompt": "a cute cat", "prompt_upsampling": True})
    assert body["status"] == "Request Moderated", body
    assert body["details"]["code"] == "request_moderated"
    (verdict,) = body["details"]["verdicts"]
    assert verdict["point"] == "prompt"
    assert verdict["category"] == "blocked_term: lolicon"
    assert len(chat.requests) == 1
    # The same prompt, not rewritten, passes: the refusal came from the rewrite.
    assert bfl(chat_client, {"prompt": "a cute cat"})["status"] == "Ready"


def test_no_backend_configured(client):
    """The conftest app has no --prompt-upsampler: the prompt is used as sent, with a note."""
    body = bfl(client, {"prompt": "a red fox", "prompt_upsampling": True})
    assert body["status"] == "Ready", body
    assert body["result"]["prompt"] == "a red fox"
    assert body["details"]["notes"] == [NO_UPSAMPLER]
    assert "not configured" in body["details"]["notes"][0]


# -- a local causal LM ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_lm(tmp_path_factory.mktemp("lm") / "tiny-lm")


def test_local_lm_rewrites_deterministically(lm_dir, tiny_model_dir, tmp_path):
    expected = LocalUpsampler(lm_dir, "tiny-lm", "cpu", 60.0).rewrite("a red fox")
    assert expected.startswith("z z")
    settings = Settings(
        model=[str(tiny_model_dir)],
        data_dir=tmp_path / "data",
        worker_mode="thread",
        device="cpu",
        prompt_upsampler=str(lm_dir),
        prompt_upsampler_timeout=60.0,
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        first = bfl(client, {"prompt": "a red fox", "prompt_upsampling": True, "seed": 1})
        second = bfl(client, {"prompt": "a red fox", "prompt_upsampling": True, "seed": 2})
    for body in (first, second):
        assert body["status"] == "Ready", body
        assert body["result"]["prompt"] == expected
        assert "details" not in body or body["details"] is None


# -- units ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "prompt"),
    [
        ("A red fox.", "A red fox."),
        ('  "A red fox in the snow."  ', "A red fox in the snow."),
        ('"A red fox."\n\nI kept the fox and added snow.', "A red fox."),
        ("\n\nA red fox.\nIn the snow.\n\nNotes: none", "A red fox.\nIn the snow."),
    ],
)
def test_clean(answer, prompt):
    assert clean(answer) == prompt


def test_clean_bounds_a_runaway_answer():
    assert clean("fox " * 2000) == ("fox " * 2000)[:MAX_PROMPT_CHARS]


@pytest.mark.parametrize("answer", ["", "   \n ", '""', '  " "  ', "\n\n\n"])
def test_clean_refuses_an_empty_answer(answer):
    with pytest.raises(UpsamplingFailed, match="empty prompt"):
        clean(answer)


def test_chat_upsampler_direct(chat):
    upsampler = ChatUpsampler(chat.base_url + "/", "test-llm", 5.0)
    assert upsampler.url == f"{chat.base_url}/chat/completions"
    assert upsampler.rewrite("a red fox") == rewrite_of("a red fox")
    (sent,) = chat.requests
    assert sent["model"] == "test-llm"
    assert sent["messages"][0] == {"role": "system", "content": system_prompt()}
    assert sent["messages"][1] == {"role": "user", "content": "a red fox"}

    chat.mode = "quoted"  # the answer is cleaned: unquoted, first paragraph only
    assert upsampler.rewrite("a red fox") == rewrite_of("a red fox")


def test_chat_upsampler_without_a_model_name(chat):
    assert ChatUpsampler(chat.base_url, None, 5.0).rewrite("x") == rewrite_of("x")
    assert chat.requests[0]["model"] == "default"


def test_chat_upsampler_timeout(chat):
    chat.mode = "slow"
    upsampler = ChatUpsampler(chat.base_url, "test-llm", 0.3)
    started = time.monotonic()
    with pytest.raises(UpsamplingFailed, match=r"did not answer within 0\.3 s"):
        upsampler.rewrite("a red fox")
    assert time.monotonic() - started < SLOW - 1


def test_chat_upsampler_timeout_bounds_the_whole_answer(chat):
    chat.mode = "drip"
    upsampler = ChatUpsampler(chat.base_url, "test-llm", 0.5)
    # Each byte comes well within 0.5 s, the whole answer in 1.6 s: only a deadline on the
    # whole call gives up (read timeouts alone would return the rewrite).
    with pytest.raises(UpsamplingFailed, match=r"did not answer within 0\.5 s"):
        upsampler.rewrite("a red fox")


@pytest.mark.parametrize(
    ("mode", "match"),
    [("error", "HTTPStatusError"), ("malformed", "JSONDecodeError"), ("null", "held no text")],
)
def test_chat_upsampler_failures(chat, mode, match):
    chat.mode = mode
    with pytest.raises(UpsamplingFailed, match=match):
        ChatUpsampler(chat.base_url, "test-llm", 5.0).rewrite("a red fox")


def test_chat_upsampler_nothing_listening():
    upsampler = ChatUpsampler(f"http://127.0.0.1:{free_port()}/v1", "test-llm", 2.0)
    with pytest.raises(UpsamplingFailed, match="ConnectError"):
        upsampler.rewrite("a red fox")


def test_chat_upsampler_wrong_path(chat):
    # A base URL without /v1 reaches /chat/completions, which the backend does not serve.
    with pytest.raises(UpsamplingFailed, match="HTTPStatusError"):
        ChatUpsampler(f"http://127.0.0.1:{chat.port}", "test-llm", 5.0).rewrite("x")
    assert chat.requests == []
