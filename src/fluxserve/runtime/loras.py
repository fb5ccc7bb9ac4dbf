"""LoRAs on the GPU: a bounded set of loaded adapters per transformer, switched per job.

diffusers' adapter API does the work (``load_lora_weights``, ``set_adapters``,
``delete_adapters``). A job's LoRAs are loaded once and kept, least recently used first
out, up to ``--max-loaded-loras``. Under ``torch.compile`` a new LoRA replaces an evicted
one in place (``enable_lora_hotswap`` before the first load, then ``hotswap=True``), so
the compiled transformer is not compiled again; a LoRA that does not fit what hot-swap was
prepared for is loaded plainly instead, with a log line. A scale of 0 leaves the adapter
out: the image is exactly the base image.

Before a LoRA is loaded its tensors are checked against the transformer (every layer it
names exists, with its shapes), so a LoRA made for another model ends its job with a
LoraError naming it instead of loading silently or failing deep inside the model.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from fluxserve.errors import LoraError
from fluxserve.runtime.base import LoraFile

logger = logging.getLogger(__name__)

HOTSWAP_RANK = 128  # the largest rank hot-swap is prepared for (diffusers pads to it)


@dataclass
class AdapterCounters:
    hits: int = 0
    loads: int = 0
    hotswaps: int = 0
    swap_seconds: float = 0.0


def lora_layers(pipeline: Any, lora: LoraFile) -> dict[str, tuple[int, int]]:
    """The transformer layers ``lora`` changes, as (in, out) features, in diffusers' naming
    (kohya and XLabs files are converted by ``lora_state_dict``)."""
    try:
        state = type(pipeline).lora_state_dict(str(lora.path))
    except Exception as exc:  # a format diffusers cannot read
        raise LoraError(
            "lora_invalid", f"LoRA {lora.name} is not a LoRA diffusers can read: {exc}"
        ) from None
    state = state[0] if isinstance(state, tuple) else state
    layers: dict[str, list[int]] = {}
    for key, tensor in state.items():
        if not key.startswith("transformer.") or ".lora_" not in key:
            continue
        module, _, part = key.removeprefix("transformer.").rpartition(".lora_")
        entry = layers.setdefault(module, [0, 0])
        if part.startswith("A"):
            entry[0] = int(tensor.shape[-1])
        elif part.startswith("B"):
            entry[1] = int(tensor.shape[0])
    return {module: (fan_in, fan_out) for module, (fan_in, fan_out) in layers.items()}


def check_fits(pipeline: Any, lora: LoraFile, model: str) -> None:
    """LoraError unless every layer ``lora`` names is in the transformer, with its shape."""
    layers = lora_layers(pipeline, lora)
    if not layers:
        raise LoraError(
            "lora_incompatible", f"LoRA {lora.name} changes no layer of {model}'s transformer"
        )
    transformer = pipeline.transformer
    misfits = []
    for module_name, (fan_in, fan_out) in layers.items():
        try:
            module = transformer.get_submodule(module_name)
        except AttributeError:
            misfits.append(f"{module_name} (no such layer)")
            continue
        expected = (getattr(module, "in_features", None), getattr(module, "out_features", None))
        if (fan_in and fan_in != expected[0]) or (fan_out and fan_out != expected[1]):
            misfits.append(f"{module_name} ({fan_in}->{fan_out}, the model's {expected[0]}->"
                           f"{expected[1]})")  # fmt: skip
    if misfits:
        raise LoraError(
            "lora_incompatible",
            f"LoRA {lora.name} does not fit {model}: {len(misfits)} of its {len(layers)} "
            f"layers do not match (e.g. {misfits[0]}); is it made for another model?",
        )


class AdapterSet:
    """The LoRAs loaded into one pipeline's transformer."""

    def __init__(self, max_loaded: int, hotswap: bool = False) -> None:
        self.max_loaded = max_loaded
        self.hotswap = hotswap  # the transformer is compiled: swap weights in place
        self.loaded: OrderedDict[str, str] = OrderedDict()  # digest -> adapter name
        self.counters = AdapterCounters()
        self._prepared = False

    def apply(self, pipeline: Any, loras: list[LoraFile], model: str) -> list[dict]:
        """Make ``loras`` (and only they) active at their scales; what each took, for the
        job's report."""
        active = [lora for lora in loras if lora.scale != 0]
        if not active:
            if self.loaded:
                pipeline.disable_lora()
            return [{"lora": lora.name, "scale": lora.scale, "gpu": "unused"} for lora in loras]
        keep = {lora.digest for lora in active}
        report = []
        names = []
        for lora in active:
            started = time.perf_counter()
            name, how = self._ensure(pipeline, lora, keep, model)
            names.append(name)
            seconds = round(time.perf_counter() - started, 4)
            report.append({"lora": lora.name, "scale": lora.scale, "gpu": how,
                           "swap_seconds": seconds})  # fmt: skip
        self._trim(pipeline, keep)  # a job that needed more than the bound went over it
        pipeline.enable_lora()
        pipeline.set_adapters(names, [lora.scale for lora in active])
        return report

    def _trim(self, pipeline: Any, keep: set[str]) -> None:
        while len(self.loaded) > self.max_loaded:
            evicted = self._evict(keep, force=True)
            if evicted is None:
                return
            pipeline.delete_adapters(evicted)

    def _ensure(self, pipeline: Any, lora: LoraFile, keep: set[str], model: str
                ) -> tuple[str, str]:  # fmt: skip
        if lora.digest in self.loaded:
            self.loaded.move_to_end(lora.digest)
            self.counters.hits += 1
            return self.loaded[lora.digest], "loaded"
        check_fits(pipeline, lora, model)
        evicted = self._evict(keep)
        started = time.perf_counter()
        if self.hotswap and evicted is not None and self._hotswap(pipeline, lora, evicted):
            name, how = evicted, "hotswap"
            self.counters.hotswaps += 1
        else:
            if evicted is not None:
                pipeline.delete_adapters(evicted)
            name, how = f"lora_{lora.digest[:16]}", "load"
            self._prepare(pipeline)
            self._load(pipeline, lora, name)
            self.counters.loads += 1
        self.counters.swap_seconds += time.perf_counter() - started
        self.loaded[lora.digest] = name
        return name, how

    def _evict(self, keep: set[str], force: bool = False) -> str | None:
        """Room for one more: the least recently used adapter not in ``keep`` (its name),
        or None when there is room (or every loaded one is wanted)."""
        if len(self.loaded) < self.max_loaded and not force:
            return None
        for digest in self.loaded:
            if digest not in keep:
                return self.loaded.pop(digest)
        return None  # every loaded one is wanted: go one over for this job

    def _prepare(self, pipeline: Any) -> None:
        """Hot-swap needs its target rank set before the first LoRA is loaded."""
        if self.hotswap and not self._prepared and not self.loaded:
            pipeline.enable_lora_hotswap(target_rank=HOTSWAP_RANK)
            self._prepared = True

    def _hotswap(self, pipeline: Any, lora: LoraFile, name: str) -> bool:
        try:
            pipeline.load_lora_weights(str(lora.path), adapter_name=name, hotswap=True)
            return True
        except Exception as exc:  # wider rank, other layers: a plain load recompiles
            logger.warning("LoRA %s could not be hot-swapped (%s); loading it plainly",
                           lora.name, exc)  # fmt: skip
            return False

    def _load(self, pipeline: Any, lora: LoraFile, name: str) -> None:
        try:
            pipeline.load_lora_weights(str(lora.path), adapter_name=name)
        except Exception as exc:  # checked above; anything left is still the LoRA's fault
            raise LoraError(
                "lora_incompatible", f"LoRA {lora.name} could not be loaded: {exc}"
            ) from None
