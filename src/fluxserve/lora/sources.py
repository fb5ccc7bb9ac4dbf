"""A request's LoRA ``path`` made into one canonical source, checked at submit. Torch-free.

A path is the name of a LoRA the operator registered (``fluxserve loras add``), a file in
``--lora-dir``, a Hugging Face repo id (``owner/name``, optionally ``owner/name:file``), or
an http(s) URL. Each becomes a source string the workers fetch without the registry:
``https://...``, ``hf:owner/name[:file]`` or ``file:/abs/path``. Only safetensors are ever
loaded: a path naming a pickle format is refused here, before anything is queued.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fluxserve.addresses import UrlPolicy, check_url
from fluxserve.errors import InvalidRequest

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
HUB_PATH = re.compile(r"([A-Za-z0-9][\w.-]{0,95})/([\w.-]{1,96})(?::([\w./-]+\.safetensors))?")
MAX_LORAS = 8  # per request: each is a download and GPU memory
SCALE_RANGE = (-4.0, 4.0)


@dataclass(frozen=True)
class LoraPolicy:
    """Which kinds of path this server takes (``--allow-lora-urls``, ``--allow-hub-loras``)
    and where ``--lora-dir`` files live."""

    allow_urls: bool = True
    allow_hub: bool = True
    lora_dir: Path | None = None
    urls: UrlPolicy = UrlPolicy()


# name -> (source, default scale) of a registered LoRA, or None
Lookup = Callable[[str], tuple[str, float] | None]


def resolve(path: str, field_name: str, policy: LoraPolicy, lookup: Lookup) -> tuple[str, float]:
    """``path``'s canonical source and its default scale (1, or the registered one);
    InvalidRequest naming ``field_name`` for a path this server does not take."""
    path = path.strip()
    if path.lower().split("?")[0].endswith(PICKLE_SUFFIXES):
        raise InvalidRequest(
            field_name,
            f"{field_name}: only .safetensors LoRAs are loaded; pickle formats "
            f"({', '.join(PICKLE_SUFFIXES)}) can run code and are refused",
        )
    registered = lookup(path)
    if registered is not None:
        return registered
    if path.startswith(("http://", "https://")):
        if not policy.allow_urls:
            raise InvalidRequest(
                field_name, f"{field_name}: this server takes only registered LoRAs, not URLs"
            )
        check_url(path, field_name, policy.urls)  # refused addresses: a 422 now
        return path, 1.0
    local = _lora_dir_file(path, policy)
    if local is not None:
        return f"file:{local}", 1.0
    hub = HUB_PATH.fullmatch(path)
    if hub is not None:
        if not policy.allow_hub:
            raise InvalidRequest(
                field_name,
                f"{field_name}: this server takes no Hugging Face LoRAs (--allow-hub-loras)",
            )
        return f"hf:{path}", 1.0
    raise InvalidRequest(
        field_name,
        f"{field_name} must be a registered LoRA's name, a Hugging Face repo id "
        "(owner/name or owner/name:file.safetensors), or an http(s) URL",
    )


def _lora_dir_file(path: str, policy: LoraPolicy) -> Path | None:
    """A .safetensors file directly in ``--lora-dir`` (never outside it)."""
    if policy.lora_dir is None or "/" in path or not path.endswith(".safetensors"):
        return None
    candidate = (policy.lora_dir / path).resolve()
    if candidate.parent != policy.lora_dir.resolve() or not candidate.is_file():
        return None
    return candidate


def check_scale(scale: float, field_name: str) -> float:
    low, high = SCALE_RANGE
    if not low <= scale <= high:
        raise InvalidRequest(field_name, f"{field_name} must be {low:g} to {high:g}, got {scale}")
    return float(scale)


def describe(source: str) -> str:
    """A source as a person reads it (for messages, metadata and the report)."""
    return source.removeprefix("hf:").removeprefix("file:")
