"""BFL routes: thin; conversion lives in convert.py, the job logic in JobService."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query

from fluxserve.api.bfl import convert
from fluxserve.api.bfl.protocol import (
    AsyncResponse,
    FluxDevInputs,
    FluxPro11Inputs,
    FluxProInputs,
    FluxSchnellInputs,
    ResultResponse,
    _Inputs,
)
from fluxserve.api.deps import BaseUrlDep, ServicesDep

router = APIRouter(prefix="/v1", tags=["bfl"])

XKey = Annotated[
    str | None, Header(alias="x-key", description="API key (accepted; not checked yet).")
]


def _submit(endpoint: str, inputs: _Inputs, services: ServicesDep, base: str) -> AsyncResponse:
    spec = services.router.route(endpoint)
    job = services.jobs.submit(convert.to_generation_request(endpoint, inputs, spec))
    return convert.to_async_response(job, base)


@router.post("/flux-dev", response_model=AsyncResponse)
def flux_dev(inputs: FluxDevInputs, services: ServicesDep, base: BaseUrlDep, x_key: XKey = None):
    """Generate an image with FLUX.1 [dev]."""
    return _submit("flux-dev", inputs, services, base)


@router.post("/flux-schnell", response_model=AsyncResponse)
def flux_schnell(
    inputs: FluxSchnellInputs, services: ServicesDep, base: BaseUrlDep, x_key: XKey = None
):
    """Generate an image with FLUX.1 [schnell] (a fluxserve endpoint; BFL does not host it)."""
    return _submit("flux-schnell", inputs, services, base)


@router.post("/flux-pro-1.1", response_model=AsyncResponse)
def flux_pro_11(
    inputs: FluxPro11Inputs, services: ServicesDep, base: BaseUrlDep, x_key: XKey = None
):
    """Generate an image on the model mapped to FLUX1.1 [pro]."""
    return _submit("flux-pro-1.1", inputs, services, base)


@router.post("/flux-pro", response_model=AsyncResponse)
def flux_pro(inputs: FluxProInputs, services: ServicesDep, base: BaseUrlDep, x_key: XKey = None):
    """Generate an image on the model mapped to FLUX.1 [pro] (legacy endpoint)."""
    return _submit("flux-pro", inputs, services, base)


# async, so a poll is answered on the event loop without a thread-pool hop (which costs
# more than the read itself): a SQLite read in WAL mode never waits for a writer.
@router.get("/get_result", response_model=ResultResponse)
async def get_result(
    services: ServicesDep, base: BaseUrlDep, id: str = Query(...), x_key: XKey = None
):
    """Status of a task and, once Ready, a signed link to its image."""
    job = services.jobs.get(id)
    if job is None:
        return convert.not_found(id)
    return convert.to_result_response(job, services.jobs.result_urls(job, base))
