"""The model registry: frozen specs of the models fluxserve knows by name. No torch.

The API reads specs to validate and default requests without loading the runtime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from fluxserve.domain import Task
from fluxserve.errors import InvalidRequest

# make-tiny writes this file into the model directory it builds.
TINY_MARKER = "fluxserve_tiny.json"


class ModelKind(StrEnum):
    """Which family a model belongs to; endpoint names are routed by kind."""

    SCHNELL = "schnell"  # timestep-distilled: few steps, no guidance input
    DEV = "dev"  # guidance-distilled: guidance is an input of the transformer
    TEST = "test"  # random weights; answers every text-to-image endpoint
    KREA = "krea"  # FLUX.1 Krea [dev]: [dev]'s architecture, natural photographs (raw mode)
    KONTEXT = "kontext"  # editing with reference images (FluxKontextPipeline)
    FILL = "fill"  # inpainting / outpainting with a mask (FluxFillPipeline)
    # FLUX.2: text-to-image and native multi-reference editing in one model.
    FLUX2_KLEIN = "flux2-klein"  # [klein] 4B / 9B (Flux2KleinPipeline, Qwen3 text encoder)
    FLUX2_DEV = "flux2-dev"  # [dev] 32B (Flux2Pipeline, Mistral-Small text encoder)


FLUX2_KINDS = frozenset({ModelKind.FLUX2_KLEIN, ModelKind.FLUX2_DEV})


# The tasks each kind of model can run. Text-to-image models also run image-to-image.
KIND_TASKS: dict[ModelKind, frozenset[Task]] = {
    ModelKind.SCHNELL: frozenset({Task.TEXT_TO_IMAGE, Task.IMAGE_TO_IMAGE}),
    ModelKind.DEV: frozenset({Task.TEXT_TO_IMAGE, Task.IMAGE_TO_IMAGE}),
    ModelKind.TEST: frozenset({Task.TEXT_TO_IMAGE, Task.IMAGE_TO_IMAGE}),
    ModelKind.KREA: frozenset({Task.TEXT_TO_IMAGE, Task.IMAGE_TO_IMAGE}),
    ModelKind.KONTEXT: frozenset({Task.EDIT}),
    ModelKind.FILL: frozenset({Task.FILL}),
    ModelKind.FLUX2_KLEIN: frozenset({Task.TEXT_TO_IMAGE, Task.EDIT}),
    ModelKind.FLUX2_DEV: frozenset({Task.TEXT_TO_IMAGE, Task.EDIT}),
}


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
    # Output area when a request gives an aspect ratio rather than a size (Kontext), and
    # the largest output made from an input image's size (Fill, Expand, image-to-image).
    base_area: int = 1024 * 1024
    max_area: int = 1440 * 1440
    # Built by fluxserve with random weights: for tests, never real pictures.
    random_weights: bool = False
    # How many reference images an edit takes (Kontext: 4; FLUX.2 [klein] 4, [dev] 8).
    max_references: int = 4
    # FLUX.2: the [klein] size an endpoint asks for ("4b", "9b"; "" for others), and the
    # parameter count that picks "the largest FLUX.2 model loaded".
    size_class: str = ""
    parameters_b: float = 12.0
    # The text encoder's hidden layers the pipeline stacks; None: the pipeline's default.
    text_encoder_layers: tuple[int, ...] | None = None

    @property
    def tasks(self) -> frozenset[Task]:
        return KIND_TASKS[self.kind]

    @property
    def builtin(self) -> bool:
        """Built offline by fluxserve (the tiny models) rather than downloaded."""
        return self.source.startswith("builtin:")

    @property
    def is_flux2(self) -> bool:
        return self.kind in FLUX2_KINDS

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

    def guidance_notes(self, guidance: float | None) -> tuple[str, ...]:
        """A note when a client's ``guidance`` cannot be honoured: this model takes none."""
        if guidance is None or self.uses_guidance:
            return ()
        return (f"guidance {guidance:g} is not used: {self.name} takes no guidance input",)

    def effective_guidance(self, guidance: float | None) -> float | None:
        """``guidance`` or the default; None for models without a guidance input (schnell)."""
        if not self.uses_guidance:
            return None
        return guidance if guidance is not None else self.default_guidance


DEV_LICENCE = "flux-1-dev-non-commercial (gated: accept it on the Hub, then `hf auth login`)"
FLUX2_NC_LICENCE = "flux-non-commercial (gated: accept it on the Hub, then `hf auth login`)"
FLUX2_DEV_LICENCE = "flux-2-dev-non-commercial (gated: accept it on the Hub, then `hf auth login`)"
FOUR_MP = 2048 * 2048  # FLUX.2's largest output ("up to 4 MP")


def _klein(name: str, source: str, size: str, base: bool, licence: str) -> ModelSpec:
    """A FLUX.2 [klein] entry: distilled (4 steps, no guidance) or base (50 steps, CFG)."""
    params = {"4b": 4.0, "9b": 9.0}[size]
    what = "base (undistilled, CFG)" if base else "distilled to 4 steps"
    return ModelSpec(
        name=name,
        source=source,
        kind=ModelKind.FLUX2_KLEIN,
        default_steps=50 if base else 4,
        max_steps=50,
        default_guidance=4.0 if base else None,
        max_sequence_length=512,
        licence=licence,
        description=f"FLUX.2 [klein] {size.upper()} {what}: text-to-image and editing "
        "with up to 4 reference images",
        max_area=FOUR_MP,
        max_references=4,
        size_class=size,
        parameters_b=params,
    )


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
            licence=DEV_LICENCE,
            description="FLUX.1 [dev]: guidance-distilled text-to-image",
        ),
        ModelSpec(
            name="flux-krea-dev",
            source="black-forest-labs/FLUX.1-Krea-dev",
            kind=ModelKind.KREA,
            default_steps=28,
            max_steps=50,
            default_guidance=4.5,  # the model card's and fal's default
            max_sequence_length=512,
            licence=DEV_LICENCE,
            description="FLUX.1 Krea [dev]: natural, photographic text-to-image (Ultra's raw)",
        ),
        ModelSpec(
            name="flux-kontext-dev",
            source="black-forest-labs/FLUX.1-Kontext-dev",
            kind=ModelKind.KONTEXT,
            default_steps=28,
            max_steps=50,
            default_guidance=2.5,
            max_sequence_length=512,
            licence=DEV_LICENCE,
            description="FLUX.1 Kontext [dev]: image editing with reference images",
        ),
        ModelSpec(
            name="flux-fill-dev",
            source="black-forest-labs/FLUX.1-Fill-dev",
            kind=ModelKind.FILL,
            default_steps=50,
            max_steps=50,
            default_guidance=30.0,  # the model card's value; BFL's hosted pro fill says 60
            max_sequence_length=512,
            licence=DEV_LICENCE,
            description="FLUX.1 Fill [dev]: inpainting and outpainting with a mask",
        ),
        _klein("flux2-klein-4b", "black-forest-labs/FLUX.2-klein-4B", "4b", False, "apache-2.0"),
        _klein(
            "flux2-klein-base-4b",
            "black-forest-labs/FLUX.2-klein-base-4B",
            "4b",
            True,
            "apache-2.0",
        ),  # fmt: skip
        _klein(
            "flux2-klein-9b", "black-forest-labs/FLUX.2-klein-9B", "9b", False, FLUX2_NC_LICENCE
        ),
        _klein(
            "flux2-klein-base-9b",
            "black-forest-labs/FLUX.2-klein-base-9B",
            "9b",
            True,
            FLUX2_NC_LICENCE,
        ),  # fmt: skip
        ModelSpec(
            name="flux2-dev",
            source="black-forest-labs/FLUX.2-dev",
            kind=ModelKind.FLUX2_DEV,
            default_steps=50,
            max_steps=50,
            default_guidance=4.0,
            max_sequence_length=512,
            licence=FLUX2_DEV_LICENCE,
            description="FLUX.2 [dev] 32B: text-to-image and editing with up to 8 reference "
            "images (Mistral-Small 24B text encoder)",
            max_area=FOUR_MP,
            max_references=8,
            parameters_b=32.0,
        ),
        *(
            ModelSpec(
                name=name,
                source=f"builtin:{name}",
                kind=kind,
                default_steps=4,
                max_steps=50,
                default_guidance=3.0,
                max_sequence_length=256,
                licence="apache-2.0",
                description=f"{what}, tiny, random weights: makes noise, for tests",
                # Small outputs keep tests fast on a CPU; the real sizes are the same code.
                base_area=256 * 256,
                random_weights=True,
            )
            for name, kind, what in (
                ("tiny", ModelKind.TEST, "FLUX.1 structure"),
                ("tiny-kontext", ModelKind.KONTEXT, "FLUX.1 Kontext structure"),
                ("tiny-fill", ModelKind.FILL, "FLUX.1 Fill structure"),
            )
        ),
        *(
            ModelSpec(
                name=name,
                source=f"builtin:{name}",
                kind=kind,
                default_steps=4,
                max_steps=50,
                default_guidance=guidance,
                max_sequence_length=64,  # short prompts keep the tiny encoders fast
                licence="apache-2.0",
                description=f"{what}, tiny, random weights: makes noise, for tests",
                base_area=256 * 256,
                max_area=FOUR_MP,
                random_weights=True,
                max_references=references,
                parameters_b=0.0,
                text_encoder_layers=(1, 2),
            )
            for name, kind, guidance, references, what in (
                ("tiny-flux2", ModelKind.FLUX2_KLEIN, None, 4, "FLUX.2 [klein] structure"),
                ("tiny-flux2-dev", ModelKind.FLUX2_DEV, 4.0, 8, "FLUX.2 [dev] structure"),
            )
        ),
    )
}


def spec_for_source(source: str) -> ModelSpec | None:
    """The registry entry whose hub repo id is ``source``, if any."""
    return next((s for s in MODEL_SPECS.values() if s.source == source), None)


def infer_spec(name: str, model_dir: Path | None) -> ModelSpec:
    """A spec for a model outside the registry, from its diffusers config where present.

    The pipeline class in ``model_index.json`` tells Kontext and Fill models apart; for
    text-to-image models a transformer with a guidance embedding is dev-like (guidance
    input, 28 steps) and one without is schnell-like. A directory written by ``make-tiny``
    carries a marker naming which tiny model it is.
    """
    source = str(model_dir) if model_dir else name
    if model_dir is not None and (model_dir / TINY_MARKER).exists():
        variant = json.loads((model_dir / TINY_MARKER).read_text()).get("model", "tiny")
        return replace(MODEL_SPECS.get(variant, MODEL_SPECS["tiny"]), name=name, source=source)
    index = _read_json(model_dir, "model_index.json")
    pipeline_class = index.get("_class_name", "")
    if pipeline_class == "Flux2KleinPipeline":
        return replace(MODEL_SPECS[_klein_name(model_dir, index)], name=name, source=source)
    if pipeline_class in PIPELINE_CLASS_SPECS:
        return replace(MODEL_SPECS[PIPELINE_CLASS_SPECS[pipeline_class]], name=name, source=source)
    guidance_embeds = "schnell" not in name.lower()
    config = _read_json(model_dir, "transformer/config.json")
    guidance_embeds = bool(config.get("guidance_embeds", guidance_embeds))
    base = MODEL_SPECS["flux-dev" if guidance_embeds else "flux-schnell"]
    if guidance_embeds and "krea" in name.lower():  # Krea's weights, [dev]'s architecture
        base = MODEL_SPECS["flux-krea-dev"]
    return replace(base, name=name, source=source)


PIPELINE_CLASS_SPECS = {
    "FluxKontextPipeline": "flux-kontext-dev",
    "FluxFillPipeline": "flux-fill-dev",
    "Flux2Pipeline": "flux2-dev",
}
# [klein] 9B's transformer is wider than 4B's (32 heads of 128 against 24): the width tells
# a local [klein] directory's size, and the pipeline's is_distilled its schedule.
KLEIN_9B_MIN_HEADS = 32


def _klein_name(model_dir: Path | None, index: dict) -> str:
    heads = _read_json(model_dir, "transformer/config.json").get("num_attention_heads", 24)
    size = "9b" if heads >= KLEIN_9B_MIN_HEADS else "4b"
    return f"flux2-klein-{size}" if index.get("is_distilled", True) else f"flux2-klein-base-{size}"


def _read_json(model_dir: Path | None, relative: str) -> dict:
    if model_dir is None or not (model_dir / relative).is_file():
        return {}
    return json.loads((model_dir / relative).read_text())
