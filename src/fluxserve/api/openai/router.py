"""OpenAI Images routes: thin; conversion in convert.py, job logic in JobService."""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from fluxserve.api.auth import CallerDep, SubmitterDep, abandoned
from fluxserve.api.deps import BaseUrlDep, ServicesDep
from fluxserve.api.errors import error_responses, openai_error
from fluxserve.api.openai import convert
from fluxserve.api.openai.protocol import (
    MAX_EDIT_IMAGES,
    ImagesGenerateRequest,
    ImagesResponse,
    ModelList,
    edit_form_schema,
)
from fluxserve.api.validators import lora_wants
from fluxserve.bootstrap import Services
from fluxserve.domain import Job, JobStatus
from fluxserve.errors import InvalidRequest
from fluxserve.jobs.service import Submission

router = APIRouter(prefix="/v1", tags=["openai"])

WAIT_TIMEOUT = 600.0  # seconds; the OpenAI SDK's own default timeout
# An edit form: the images and the mask at their size limit, plus this for the text parts
# and the multipart framing.
FORM_OVERHEAD = 1024 * 1024
MAX_FORM_FILES = MAX_EDIT_IMAGES + 1 + 4  # room for file parts we ignore (the SDK's markup)
MAX_FORM_FIELDS = 64
# What each route can answer besides 200, in OpenAI's error shape (api/errors.py): a bad
# parameter is a 400 here, never a 422; a job that failed is a 500.
SUBMIT_ERRORS = (400, 401, 402, 429, 500, 503, 504)


async def _answer(
    job: Job,
    response_format: str,
    services: Services,
    base: str,
    http_request: Request,
    caller: Submission,
) -> ImagesResponse | JSONResponse:
    """Wait for the job (a client that goes away cancels it) and answer with its images."""
    try:
        job = await services.jobs.wait(job.id, WAIT_TIMEOUT, abandoned(http_request, caller))
    except TimeoutError:
        return openai_error(504, "The image was not ready in time.", code="timeout")
    if job.status in (JobStatus.REQUEST_MODERATED, JobStatus.CONTENT_MODERATED):
        message = job.error_message or "The request was refused by the content policy."
        return openai_error(
            400, message, param=convert.refused_param(job), code="content_policy_violation"
        )
    if job.status is not JobStatus.SUCCEEDED:
        return openai_error(500, job.error_message or "Generation failed.", code=job.error_code)
    if response_format == "url":
        return convert.to_response(job, services.jobs.result_urls(job, base), None)
    images = await run_in_threadpool(services.jobs.read_images, job)
    return convert.to_response(job, None, images)


@router.post(
    "/images/generations",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    responses=error_responses("openai", *SUBMIT_ERRORS),
)
async def create_image(
    body: ImagesGenerateRequest,
    services: ServicesDep,
    base: BaseUrlDep,
    http_request: Request,
    caller: SubmitterDep,
):
    """Generate images and answer when they are ready."""
    spec = convert.resolve_model(services.router, body.model)
    request = convert.to_generation_request(body, spec)
    if body.loras:  # a registry read and address checks: off the event loop
        request = await run_in_threadpool(services.loras.attach, request, lora_wants(body.loras))
    job = await services.jobs.submit_async(request, submission=caller)
    return await _answer(job, body.response_format, services, base, http_request, caller)


class _TooLarge(Exception):
    """The request body ran past the edit form's limit."""


async def _capped(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """``stream``, refused once it passes ``limit`` bytes (a chunked body declares no
    length, and a declared one may be wrong)."""
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise _TooLarge
        yield chunk


def _too_large(limit: int) -> JSONResponse:
    return openai_error(
        413,
        f"The request is larger than {limit} bytes: at most {MAX_EDIT_IMAGES} images and a "
        "mask, each within the server's image size limit.",
        param="image",
        code="request_too_large",
    )


async def _read_form(http_request: Request, limit: int) -> FormData | JSONResponse:
    """The multipart form, or the error response when it cannot be read."""
    declared = http_request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:  # refused before a byte is read
        return _too_large(limit)
    content_type = http_request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "multipart/form-data":
        return openai_error(
            400,
            "images/edits takes multipart/form-data: the image file(s), an optional mask "
            "file and the text fields.",
            code="invalid_content_type",
        )
    stream = _capped(http_request.stream(), limit)
    parser = MultiPartParser(
        http_request.headers, stream, max_files=MAX_FORM_FILES, max_fields=MAX_FORM_FIELDS
    )
    try:
        return await parser.parse()
    except _TooLarge:
        return _too_large(limit)
    except MultiPartException as exc:
        return openai_error(400, f"Invalid multipart form: {exc.message}", code="invalid_form")
    finally:
        await stream.aclose()


async def _edit_form(form: FormData) -> convert.EditForm:
    """The text fields checked and the files read (bytes; decoded later, off the loop)."""
    texts = [(name, value) for name, value in form.multi_items() if isinstance(value, str)]
    edit = convert.EditForm(convert.edit_fields(texts))
    for name, value in form.multi_items():
        if not isinstance(value, UploadFile):
            continue
        if name in convert.IMAGE_FIELDS:
            edit.images.append(await value.read())
        elif name == "mask":
            if edit.mask is not None:
                raise InvalidRequest("mask", "send one mask")
            edit.mask = await value.read()
    return edit


@router.post(
    "/images/edits",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    responses=error_responses("openai", *SUBMIT_ERRORS, 413),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": edit_form_schema()}},
        }
    },
)
async def edit_image(
    services: ServicesDep,
    base: BaseUrlDep,
    http_request: Request,
    caller: SubmitterDep,
):
    """Edit images as the prompt says and answer when the results are ready.

    Without a mask a Kontext model edits (every image is a reference) or a text-to-image
    model runs image-to-image on the one image; with a mask, whose transparent pixels mark
    the area to repaint, a Fill model repaints it.
    """
    limit = (MAX_EDIT_IMAGES + 1) * services.settings.max_image_bytes + FORM_OVERHEAD
    try:
        form = await _read_form(http_request, limit)
    except ClientDisconnect:
        return openai_error(400, "The client went away while sending the form.")
    if isinstance(form, JSONResponse):
        return form
    try:
        edit = await _edit_form(form)
    finally:
        await form.close()
    request, prepared = await run_in_threadpool(
        convert.to_edit_request, edit, services.router, services.images
    )
    if edit.body.loras:
        wants = lora_wants(edit.body.loras)
        request = await run_in_threadpool(services.loras.attach, request, wants)
    job = await services.jobs.submit_async(request, *prepared.parts(), submission=caller)
    return await _answer(job, edit.body.response_format, services, base, http_request, caller)


@router.get("/models", response_model=ModelList, responses=error_responses("openai", 401, 503))
def list_models(services: ServicesDep, _key: CallerDep) -> ModelList:
    """The loaded models."""
    created = int(services.started_at)
    return convert.to_model_list(list(services.router.models.values()), created)
