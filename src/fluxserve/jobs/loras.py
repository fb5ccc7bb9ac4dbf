"""A request's LoRAs checked and resolved at submit, one path for every dialect. Torch-free.

Each dialect says which LoRAs its body asks for (``LoraWanted``: the field, the path, the
scale or None); ``LoraRequests.attach`` resolves registered names through the registry and
checks every path against the server's policy (lora/sources.py), so a malformed or refused
path is a 422 naming its field and nothing is queued. The worker fetches the sources.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fluxserve.domain import GenerationRequest
from fluxserve.errors import InvalidRequest
from fluxserve.lora.sources import MAX_LORAS, LoraPolicy, check_scale, resolve
from fluxserve.store.loras import LoraRegistry, RegisteredLora

__all__ = ["LoraRequests", "LoraWanted", "RegisteredLora"]  # api/ reaches the store here


@dataclass(frozen=True)
class LoraWanted:
    field: str  # where the path came from, for errors: "loras.0.path", "finetune_id"
    path: str
    scale: float | None = None  # None: the registered scale, else 1
    scale_field: str = "scale"


class LoraRequests:
    def __init__(self, registry: LoraRegistry, policy: LoraPolicy) -> None:
        self.registry = registry
        self.policy = policy

    def lookup(self, name: str) -> tuple[str, float] | None:
        entry = self.registry.get(name)
        return (entry.source, entry.scale) if entry else None

    def attach(self, request: GenerationRequest, wanted: list[LoraWanted]) -> GenerationRequest:
        """``request`` with its LoRAs resolved; InvalidRequest naming the field at fault."""
        if not wanted:
            return request
        if len(wanted) > MAX_LORAS:
            raise InvalidRequest("loras", f"at most {MAX_LORAS} LoRAs per request", len(wanted))
        loras = []
        for lora in wanted:
            source, default = resolve(lora.path, lora.field, self.policy, self.lookup)
            scale = lora.scale if lora.scale is not None else default
            loras.append((source, check_scale(scale, lora.scale_field)))
        return dataclasses.replace(request, loras=tuple(loras))

    def registered(self, name: str, field_name: str = "finetune_id") -> RegisteredLora:
        entry = self.registry.get(name)
        if entry is None:
            raise InvalidRequest(field_name, f"no LoRA is registered as {name!r}", name)
        return entry

    def register(self, name: str, path: str, scale: float = 1.0) -> RegisteredLora:
        """Register ``path`` (anything a request may name but another registered name)."""
        if not name.strip() or "/" in name or name.startswith(("http:", "https:")):
            raise InvalidRequest("name", "a LoRA's name is a word without '/', not a URL")
        source, _ = resolve(path, "source", self.policy, lambda _: None)
        return self.registry.add(name.strip(), source, check_scale(scale, "scale"))
