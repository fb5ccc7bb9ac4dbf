"""The playground page and the models it offers.

The page is plain static files (no build step, nothing fetched from elsewhere). It submits
through the public BFL API: ``POST /v1/{name}`` (api/bfl/router.py) lets it pick a model by
name, which the fixed BFL routes (chosen by kind) cannot.
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
from fluxserve.specs import ModelSpec

router = APIRouter()

STATIC = Path(__file__).parent / "static"
FILES = {  # the only files served: nothing else under static/ is reachable
    "playground.css": "text/css",
    "playground.js": "text/javascript",
}
NO_CACHE = {"Cache-Control": "no-cache"}  # revalidate: a new release shows at once
MIN_SIDE, MAX_SIDE = 256, 1440  # BFL's width/height limits
PRESETS = {"square": 1.0, "portrait": 3 / 4, "landscape": 4 / 3}  # width / height


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    """The playground page."""
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=NO_CACHE)


# Outside /v1/, its errors take fal's shape (api/errors.py dialect_of).
@router.get("/playground/models", tags=["playground"], responses=error_responses("fal", 401, 503))
def models(services: ServicesDep, _key: CallerDep) -> list[dict]:
    """The loaded text-to-image models, with the defaults and sizes the form offers."""
    aliases = services.router.aliases
    return [
        _describe(spec, sorted(a for a, target in aliases.items() if target == spec.name))
        for spec in services.router.models.values()
        if Task.TEXT_TO_IMAGE in spec.tasks
    ]


@router.get("/playground/{filename}", include_in_schema=False)
def static_file(filename: str) -> FileResponse:
    if filename not in FILES:
        raise HTTPException(404, "Not Found")
    return FileResponse(STATIC / filename, media_type=FILES[filename], headers=NO_CACHE)


def _describe(spec: ModelSpec, aliases: list[str]) -> dict:
    side = _grid(math.sqrt(spec.base_area))
    return {
        "name": spec.name,
        "kind": str(spec.kind),
        "description": spec.description,
        "aliases": aliases,
        "default_steps": spec.default_steps,
        "max_steps": min(spec.max_steps, 50),  # the BFL schema's limit
        "default_guidance": spec.default_guidance,
        # Reference images the form may send (input_image ...): FLUX.2 models only.
        "max_references": spec.max_references if spec.is_flux2 else 0,
        "width": side,
        "height": side,
        "presets": [
            {"name": name, **_preset_size(spec.base_area, ratio)} for name, ratio in PRESETS.items()
        ],
    }


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
