"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from fluxserve.api.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The server process is up."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(services: ServicesDep) -> JSONResponse:
    """Every model is loaded and its worker is running."""
    workers = services.workers.status() if services.workers is not None else []
    ready = services.is_ready()
    body = {"status": "ready" if ready else "not ready", "workers": workers}
    return JSONResponse(body, status_code=200 if ready else 503)
