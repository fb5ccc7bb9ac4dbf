"""The model registry: frozen specs of the models fluxserve knows by name. No torch.

The API reads specs to validate and default requests without loading the runtime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from fluxserve.errors import InvalidRequest

# make-tiny writes this file into the model directory it builds.
TINY_MARKER = "fluxserve_tiny.json"


class ModelKind(StrEnum):
    """Which family a model belongs to; endpoint names are routed by kind."""

    SCHNELL = "schnell"  # timestep-distilled: few steps, no guidance input
    DEV = "dev"  # guidance-distilled: guidance is an input of the transformer
    TEST = "test"  # random weights; answers every text-to-image endpoint


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str
    kind: ModelKind
    default_steps: int
    max_steps: int
    default_guidance: float | None
    max_sequence_length: int
    licence: str
    description: str

    @property
    def uses_guidance(self) -> bool:
        return self.default_guidance is not None

    def effective_steps(self, steps: int | None) -> int:
        """``steps`` or this model's default; InvalidRequest past the model's maximum."""
        steps = steps or self.default_steps
        if not 1 <= steps <= self.max_steps:
            raise InvalidRequest(
                "steps", f"{self.name} takes 1 to {self.max_steps} steps, got {steps}", steps
            )
        return steps

    def effective_guidance(self, guidance: float | None) -> float | None:
        """``guidance`` or the default; None for models without a guidance input (schnell)."""
        if not self.uses_guidance:
            return None
        return guidance if guidance is not None else self.default_guidance


MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="flux-schnell",
            source="black-forest-labs/FLUX.1-schnell",
            kind=ModelKind.SCHNELL,
            default_steps=4,
            max_steps=12,
            default_guidance=None,
            max_sequence_length=256,
            licence="apache-2.0",
            description="FLUX.1 [schnell]: 4-step distilled text-to-image",
        ),
        ModelSpec(
            name="flux-dev",
            source="black-forest-labs/FLUX.1-dev",
            kind=ModelKind.DEV,
            default_steps=28,
            max_steps=50,
            default_guidance=3.0,
            max_sequence_length=512,
            licence="flux-1-dev-non-commercial (gated: accept it on the Hub, then `hf auth login`)",
            description="FLUX.1 [dev]: guidance-distilled text-to-image",
        ),
        ModelSpec(
            name="tiny",
            source="builtin:tiny",
            kind=ModelKind.TEST,
            default_steps=4,
            max_steps=50,
            default_guidance=3.0,
            max_sequence_length=256,
            licence="apache-2.0",
            description="FLUX.1 structure, tiny, random weights: makes noise, for tests",
        ),
    )
}


def spec_for_source(source: str) -> ModelSpec | None:
    """The registry entry whose hub repo id is ``source``, if any."""
    return next((s for s in MODEL_SPECS.values() if s.source == source), None)


def infer_spec(name: str, model_dir: Path | None) -> ModelSpec:
    """A spec for a model outside the registry, from its diffusers config where present.

    A transformer with a guidance embedding is dev-like (guidance input, 28 steps); one
    without is schnell-like. A directory written by ``make-tiny`` carries a marker and is
    treated as the tiny test model.
    """
    if model_dir is not None and (model_dir / TINY_MARKER).exists():
        return replace(MODEL_SPECS["tiny"], name=name, source=str(model_dir))
    guidance_embeds = "schnell" not in name.lower()
    if model_dir is not None:
        config = model_dir / "transformer" / "config.json"
        if config.exists():
            guidance_embeds = bool(json.loads(config.read_text()).get("guidance_embeds", True))
    base = MODEL_SPECS["flux-dev" if guidance_embeds else "flux-schnell"]
    return replace(base, name=name, source=str(model_dir) if model_dir else name)
