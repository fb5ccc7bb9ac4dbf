"""OpenAI Images routes: thin; conversion in convert.py, job logic in JobService."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from starlette.concurrency import run_in_threadpool

from fluxserve.api.deps import BaseUrlDep, ServicesDep
from fluxserve.api.errors import openai_error
from fluxserve.api.openai import convert
from fluxserve.api.openai.protocol import ImagesGenerateRequest, ImagesResponse, ModelList
from fluxserve.domain import JobStatus

router = APIRouter(prefix="/v1", tags=["openai"])

WAIT_TIMEOUT = 600.0  # seconds; the OpenAI SDK's own default timeout
Authorization = Annotated[
    str | None, Header(description="Bearer API key (accepted; not checked yet).")
]


@router.post("/images/generations", response_model=ImagesResponse, response_model_exclude_none=True)
async def create_image(
    body: ImagesGenerateRequest,
    services: ServicesDep,
    base: BaseUrlDep,
    http_request: Request,
    authorization: Authorization = None,
):
    """Generate images and answer when they are ready."""
    spec = convert.resolve_model(services.router, body.model)
    job = await services.jobs.submit_async(convert.to_generation_request(body, spec))
    try:
        job = await services.jobs.wait(job.id, WAIT_TIMEOUT, http_request.is_disconnected)
    except TimeoutError:
        return openai_error(504, "The image was not ready in time.", code="timeout")
    if job.status is not JobStatus.SUCCEEDED:
        return openai_error(500, job.error_message or "Generation failed.", code=job.error_code)
    if body.response_format == "url":
        return convert.to_response(job, services.jobs.result_urls(job, base), None)
    images = await run_in_threadpool(services.jobs.read_images, job)
    return convert.to_response(job, None, images)


@router.get("/models", response_model=ModelList)
def list_models(services: ServicesDep, authorization: Authorization = None) -> ModelList:
    """The loaded models."""
    created = int(services.started_at)
    return convert.to_model_list(list(services.router.models.values()), created)
