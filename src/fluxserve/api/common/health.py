"""Liveness and readiness probes (HEAD answers too: api/common/head.py)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from fluxserve.api.deps import ServicesDep

router = APIRouter(tags=["health"])


class Liveness(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    """200 when ready, 503 with the same body while a model loads or a worker is down."""

    status: Literal["ready", "not ready"]
    workers: list[dict[str, Any]]


@router.get("/healthz", response_model=Liveness)
def healthz() -> dict[str, str]:
    """The server process is up."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready yet, or no longer."}},
)
def readyz(services: ServicesDep) -> JSONResponse:
    """Every model is loaded and its worker is running."""
    workers = services.workers.status() if services.workers is not None else []
    ready = services.is_ready()
    body = {"status": "ready" if ready else "not ready", "workers": workers}
    return JSONResponse(body, status_code=200 if ready else 503)
