"""The playground page, the models it offers and what each can do, and the registered LoRAs.

The page is plain static files (no build step, nothing fetched from elsewhere). It submits
through the public BFL API: ``POST /v1/{name}`` (api/bfl/router.py) lets it pick a
text-to-image model by name (with ``image_prompt`` for image-to-image, ``input_image`` ...
for a FLUX.2 edit, ``loras``); Kontext, Fill, Expand and Ultra go to their fixed BFL routes,
which pick their model by kind, so a mode is offered on a model only where that route
reaches it.
"""

from __future__ import annotations

import math
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from fluxserve.api.auth import CallerDep
from fluxserve.api.bfl.protocol import DIMENSION_STEP
from fluxserve.api.deps import ServicesDep
from fluxserve.api.errors import error_responses
from fluxserve.domain import Task
from fluxserve.errors import ModelNotAvailable
from fluxserve.jobs.routing import ModelRouter
from fluxserve.lora.sources import MAX_LORAS, describe
from fluxserve.specs import ModelKind, ModelSpec

router = APIRouter()

STATIC = Path(__file__).parent / "static"
FILES = {  # the only files served: nothing else under static/ is reachable
    "playground.css": "text/css",
    "playground.js": "text/javascript",
}
NO_CACHE = {"Cache-Control": "no-cache"}  # revalidate: a new release shows at once
MIN_SIDE, MAX_SIDE = 256, 1440  # BFL's width/height limits
PRESETS = {"square": 1.0, "portrait": 3 / 4, "landscape": 4 / 3}  # width / height
FILL_STEPS = (15, 50)  # BFL's Fill and Expand take 15-50 steps
ULTRA_RATIOS = ["21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21"]
# The fal ids the "copy as code" panel may name for a mode, best first: the first one the
# server routes to the model is shown (fal picks models by kind, not by name).
FAL_IDS: dict[str, list[str]] = {
    "generate": ["fal-ai/flux-lora", "fal-ai/flux/dev", "fal-ai/flux/schnell", "fal-ai/flux/krea",
                 "fal-ai/flux-2/lora", "fal-ai/flux-2/klein/4b", "fal-ai/flux-2/klein/9b"],
    "edit": ["fal-ai/flux-2/lora/edit", "fal-ai/flux-2/klein/4b/edit",
             "fal-ai/flux-2/klein/9b/edit", "fal-ai/flux-pro/kontext/multi"],
    "img2img": ["fal-ai/flux-lora/image-to-image", "fal-ai/flux/dev/image-to-image",
                "fal-ai/flux/krea/image-to-image"],
    "fill": ["fal-ai/flux-pro/v1/fill"],
    "ultra": ["fal-ai/flux-pro/v1.1-ultra"],
}  # fmt: skip


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    """The playground page."""
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=NO_CACHE)


# Outside /v1/, its errors take fal's shape (api/errors.py dialect_of).
@router.get("/playground/models", tags=["playground"], responses=error_responses("fal", 401, 503))
def models(services: ServicesDep, _key: CallerDep) -> list[dict]:
    """The loaded models that serve at least one playground mode, each with the modes it
    serves (generate, edit, img2img, fill, expand, ultra), the route each submits to, and
    the defaults and sizes the form offers."""
    table = services.router
    described = []
    for spec in table.models.values():
        aliases = sorted(a for a, target in table.aliases.items() if target == spec.name)
        entry = _describe(spec, aliases, table)
        if entry["modes"]:
            described.append(entry)
    return described


@router.get("/playground/loras", tags=["playground"], responses=error_responses("fal", 401, 503))
def loras(services: ServicesDep, _key: CallerDep) -> list[dict]:
    """The operator's registered LoRAs (``fluxserve loras add``): name, source and the
    scale a request gets when it gives none."""
    return [
        {"name": entry.name, "source": describe(entry.source), "scale": entry.scale}
        for entry in services.loras.registry.all()
    ]


@router.get("/playground/{filename}", include_in_schema=False)
def static_file(filename: str) -> FileResponse:
    if filename not in FILES:
        raise HTTPException(404, "Not Found")
    return FileResponse(STATIC / filename, media_type=FILES[filename], headers=NO_CACHE)


def _describe(spec: ModelSpec, aliases: list[str], table: ModelRouter | None = None) -> dict:
    side = _grid(math.sqrt(spec.base_area))
    max_steps = min(spec.max_steps, 50)  # the BFL schema's limit
    return {
        "name": spec.name,
        "kind": str(spec.kind),
        "description": spec.description,
        "aliases": aliases,
        "default_steps": spec.default_steps,
        "max_steps": max_steps,
        "default_guidance": spec.default_guidance,
        # Reference images POST /v1/{name} takes (input_image ...): FLUX.2 models only.
        "max_references": spec.max_references if spec.is_flux2 else 0,
        "width": side,
        "height": side,
        "presets": [
            {"name": name, **_preset_size(spec.base_area, ratio)} for name, ratio in PRESETS.items()
        ],
        "modes": _modes(spec, table) if table is not None else {},
    }


def _modes(spec: ModelSpec, table: ModelRouter) -> dict[str, dict]:
    """What the page can do with ``spec``: per mode, the BFL route it submits to, how it
    takes LoRAs (``list``: ``loras``; ``finetune``: one registered LoRA on the route's
    ``-finetuned`` twin; ``none``), its steps and guidance ranges, and the fal id that
    reaches the same model (for "copy as code"; None: none does)."""
    by_name = f"/v1/{spec.name}"
    steps = {"min_steps": 1, "max_steps": min(spec.max_steps, 50)}
    guidance = {"min_guidance": 1.5, "max_guidance": 10}
    modes: dict[str, dict] = {}
    if Task.TEXT_TO_IMAGE in spec.tasks:
        modes["generate"] = {"endpoint": by_name, "loras": "list", **steps, **guidance}
    if spec.is_flux2:
        modes["edit"] = {"endpoint": by_name, "loras": "list", "references": spec.max_references,
                         **steps, **guidance}  # fmt: skip
    elif spec.kind is ModelKind.KONTEXT and _routes(table, "flux-kontext-pro", spec):
        modes["edit"] = {"endpoint": "/v1/flux-kontext-pro", "loras": "none",
                         "references": spec.max_references, **steps, **guidance}  # fmt: skip
    if Task.IMAGE_TO_IMAGE in spec.tasks:
        modes["img2img"] = {"endpoint": by_name, "loras": "list", **steps, **guidance}
    fill_steps = {"min_steps": FILL_STEPS[0], "max_steps": FILL_STEPS[1],
                  "min_guidance": 1.5, "max_guidance": 100}  # fmt: skip
    if _routes(table, "flux-pro-1.0-fill", spec):
        modes["fill"] = {"endpoint": "/v1/flux-pro-1.0-fill", "loras": "finetune",
                         "finetune_endpoint": "/v1/flux-pro-1.0-fill-finetuned",
                         **fill_steps}  # fmt: skip
    if _routes(table, "flux-pro-1.0-expand", spec):
        modes["expand"] = {"endpoint": "/v1/flux-pro-1.0-expand", "loras": "none", **fill_steps}
    if _routes(table, "flux-pro-1.1-ultra", spec):
        raw = table.route("flux-pro-1.1-ultra", raw=True)
        modes["ultra"] = {"endpoint": "/v1/flux-pro-1.1-ultra", "loras": "finetune",
                          "finetune_endpoint": "/v1/flux-pro-1.1-ultra-finetuned",
                          "aspect_ratios": ULTRA_RATIOS, "raw_model": raw.name,
                          "min_steps": 1, "max_steps": 50, **guidance}  # fmt: skip
    for mode, entry in modes.items():
        entry["fal"] = next((i for i in FAL_IDS.get(mode, []) if _routes(table, i, spec)), None)
        entry["max_loras"] = {"list": MAX_LORAS, "finetune": 1}.get(entry["loras"], 0)
    return modes


def _routes(table: ModelRouter, endpoint: str, spec: ModelSpec) -> bool:
    """Whether the fixed route ``endpoint`` reaches ``spec`` on this server."""
    try:
        return table.route(endpoint).name == spec.name
    except ModelNotAvailable:
        return False


def _preset_size(area: int, ratio: float) -> dict[str, int]:
    """About ``area`` pixels at width / height ``ratio``, within BFL's limits."""
    width, height = math.sqrt(area * ratio), math.sqrt(area / ratio)
    grow = max(1.0, MIN_SIDE / min(width, height))  # tiny models: the short side is 256
    shrink = min(1.0, MAX_SIDE / max(width, height))
    scale = grow * shrink
    return {"width": _grid(width * scale), "height": _grid(height * scale)}


def _grid(value: float) -> int:
    """``value`` on BFL's 32-pixel grid, within 256..1440."""
    return min(MAX_SIDE, max(MIN_SIDE, round(value / DIMENSION_STEP) * DIMENSION_STEP))
