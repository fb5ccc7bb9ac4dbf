"""Prompt rewriters: an OpenAI-compatible chat endpoint, or a local transformers causal LM.

Either one answers ``rewrite(prompt) -> str`` or raises ``UpsamplingFailed``; the caller
then keeps the original prompt and says so. A rewrite never waits longer than its timeout.
"""

from __future__ import annotations

import logging
import threading
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import httpx

logger = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 2000  # a runaway answer is cut; FLUX reads at most 512 T5 tokens anyway
MAX_NEW_TOKENS = 200


class UpsamplingFailed(Exception):
    """The rewriter could not answer; the message says why, for the job's notes."""


class Upsampler(Protocol):
    name: str

    def load(self) -> None:
        """Get ready before the first job (may raise UpsamplingFailed)."""
        ...

    def rewrite(self, prompt: str) -> str: ...


def system_prompt() -> str:
    return resources.files("fluxserve.prompting").joinpath("system_prompt.md").read_text()


def clean(answer: str) -> str:
    """The model's answer as a prompt: trimmed, unquoted, one paragraph, bounded."""
    text = answer.strip().split("\n\n")[0].strip().strip('"“”').strip()
    if not text:
        raise UpsamplingFailed("the rewriter answered with an empty prompt")
    return text[:MAX_PROMPT_CHARS]


class ChatUpsampler:
    """Any OpenAI-compatible ``/chat/completions``: vLLM, llama.cpp's server, Ollama..."""

    def __init__(self, base_url: str, model: str | None, timeout: float) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model or "default"
        self.timeout = timeout
        self.name = f"{self.url} ({self.model})"

    def load(self) -> None:
        """Nothing to load: the endpoint is asked per job."""

    def rewrite(self, prompt: str) -> str:
        """The rewrite, within ``timeout`` seconds in all (a late answer is dropped).

        The call runs in its own daemon thread, so the caller stops waiting at the deadline
        even when the backend trickles its answer (httpx's timeout bounds each read, not the
        whole), and a stuck call never holds up the next job's.
        """
        result: list[str | BaseException] = []

        def call() -> None:
            try:
                result.append(self._call(prompt))
            except BaseException as exc:  # handed to the caller below
                result.append(exc)

        thread = threading.Thread(target=call, name="upsampler", daemon=True)
        thread.start()
        thread.join(self.timeout)
        if not result:
            raise UpsamplingFailed(f"the rewriter did not answer within {self.timeout} s")
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

    def _call(self, prompt: str) -> str:
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": system_prompt()},
                {"role": "user", "content": prompt},
            ],
            "temperature": 0.2,
            "max_tokens": MAX_NEW_TOKENS * 2,
        }
        try:
            response = httpx.post(self.url, json=body, timeout=self.timeout)
            response.raise_for_status()
            content = response.json()["choices"][0]["message"]["content"]
        except httpx.TimeoutException:
            raise UpsamplingFailed(f"the rewriter did not answer within {self.timeout} s") from None
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise UpsamplingFailed(f"the rewriter failed ({type(exc).__name__})") from None
        if not isinstance(content, str):
            raise UpsamplingFailed("the rewriter's answer held no text")
        return clean(content)


class LocalUpsampler:
    """A transformers causal LM on the worker's device; greedy, so rewrites repeat."""

    def __init__(self, path: Path, name: str, device: str, timeout: float) -> None:
        self.path = path
        self.name = name
        self.device = device
        self.timeout = timeout
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        self._load()

    def _load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            from transformers import AutoModelForCausalLM, AutoTokenizer

            try:
                self._tokenizer = AutoTokenizer.from_pretrained(self.path)
                model = AutoModelForCausalLM.from_pretrained(self.path)
            except (OSError, ValueError) as exc:
                raise UpsamplingFailed(f"the prompt rewriter could not load ({exc})") from None
            self._model = model.to(self.device).eval()
            logger.info("loaded prompt rewriter %s", self.name)

    def _input_ids(self, prompt: str) -> Any:
        tokenizer = self._tokenizer
        if tokenizer.chat_template:
            messages = [
                {"role": "system", "content": system_prompt()},
                {"role": "user", "content": prompt},
            ]
            return tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=False
            )
        text = f"{system_prompt()}\n\nPrompt: {prompt}\nRewritten prompt:"
        return tokenizer(text, return_tensors="pt").input_ids

    def rewrite(self, prompt: str) -> str:
        self._load()
        import torch

        input_ids = self._input_ids(prompt).to(self._model.device)
        with torch.inference_mode():
            output = self._model.generate(
                input_ids,
                max_new_tokens=MAX_NEW_TOKENS,
                max_time=self.timeout,  # generation stops there; what it has is used
                do_sample=False,
                pad_token_id=self._tokenizer.pad_token_id or self._tokenizer.eos_token_id,
            )
        answer = self._tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)
        return clean(answer)


def build_upsampler(
    setting: str | None, model: str | None, timeout: float, local: tuple[str, Path] | None,
    device: str,
) -> Upsampler | None:  # fmt: skip
    """The configured rewriter: a URL is a chat endpoint, anything else a local LM."""
    if setting is None:
        return None
    if setting.startswith(("http://", "https://")):
        return ChatUpsampler(setting, model, timeout)
    if local is None:
        raise ValueError("a local prompt rewriter must be resolved before the worker starts")
    return LocalUpsampler(local[1], local[0], device, timeout)
