"""fal routes: synchronous ``POST /<endpoint>``, and the queue under ``/queue``.

Endpoint ids are ``owner/alias/subpath`` (the subpath may hold slashes, as in
``kontext/max/multi``); status, result and cancel live under
``/queue/<owner>/<alias>/requests/<id>`` (also served with the subpath, as some clients
build them so).
"""

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import AfterValidator
from starlette.concurrency import run_in_threadpool

from fluxserve.api.auth import CallerDep, SubmitterDep, abandoned, owner_of
from fluxserve.api.deps import BaseUrlDep, ServicesDep
from fluxserve.api.errors import error_responses
from fluxserve.api.fal import convert
from fluxserve.api.fal.protocol import (
    CancelStatus,
    Flux2EditInput,
    Flux2Input,
    Flux2LoraEditInput,
    Flux2LoraInput,
    Flux2ProEditInput,
    Flux2ProInput,
    FluxImageToImageInput,
    FluxInput,
    FluxLoraImageToImageInput,
    FluxLoraInput,
    FluxProFillInput,
    FluxProUltraInput,
    FluxProV11Input,
    KontextDevInput,
    KontextProInput,
    KontextProMultiInput,
    KontextProTextInput,
    KreaImageToImageInput,
    KreaInput,
    Output,
    QueueStatus,
    QueueSubmitted,
    _Base,
)
from fluxserve.api.validators import lora_wants
from fluxserve.bootstrap import Services
from fluxserve.domain import Job, JobStatus
from fluxserve.jobs.routing import FAL_KLEIN_SUBPATHS
from fluxserve.jobs.service import Submission
from fluxserve.jobs.webhooks import url_problem

router = APIRouter(tags=["fal"])

# app id (owner/alias) -> subpaths; each app/subpath is one endpoint id.
FAL_APPS: dict[str, list[str]] = {
    "fal-ai/flux": ["schnell", "dev", "dev/image-to-image", "krea", "krea/image-to-image"],
    "fal-ai/flux-1": ["schnell", "dev", "krea"],
    "fal-ai/flux-kontext": ["dev"],
    # "": the app id itself is an endpoint (fal-ai/flux-2-pro).
    "fal-ai/flux-2": ["", "edit", "lora", "lora/edit", *FAL_KLEIN_SUBPATHS],
    "fal-ai/flux-lora": ["", "image-to-image"],
    "fal-ai/flux-2-pro": ["", "edit"],
    "fal-ai/flux-2-flex": ["", "edit"],
    "fal-ai/flux-2-max": ["", "edit"],
    "fal-ai/flux-pro": [
        "v1.1",
        "v1.1-ultra",
        "kontext",
        "kontext/max",
        "kontext/multi",
        "kontext/max/multi",
        "kontext/text-to-image",
        "kontext/max/text-to-image",
        "v1/fill",
    ],
}
# Endpoint id -> its input model; endpoints not named here take FluxInput.
INPUT_MODELS: dict[str, type[_Base]] = {
    "fal-ai/flux-pro/v1.1": FluxProV11Input,
    "fal-ai/flux/dev/image-to-image": FluxImageToImageInput,
    "fal-ai/flux-kontext/dev": KontextDevInput,
    "fal-ai/flux-pro/kontext": KontextProInput,
    "fal-ai/flux-pro/kontext/max": KontextProInput,
    "fal-ai/flux-pro/kontext/multi": KontextProMultiInput,
    "fal-ai/flux-pro/kontext/max/multi": KontextProMultiInput,
    "fal-ai/flux-pro/kontext/text-to-image": KontextProTextInput,
    "fal-ai/flux-pro/kontext/max/text-to-image": KontextProTextInput,
    "fal-ai/flux-pro/v1/fill": FluxProFillInput,
    "fal-ai/flux-pro/v1.1-ultra": FluxProUltraInput,
    "fal-ai/flux/krea": KreaInput,
    "fal-ai/flux-1/krea": KreaInput,
    "fal-ai/flux/krea/image-to-image": KreaImageToImageInput,
    "fal-ai/flux-2-pro": Flux2ProInput,
    "fal-ai/flux-2-max": Flux2ProInput,
    "fal-ai/flux-2-pro/edit": Flux2ProEditInput,
    "fal-ai/flux-2-max/edit": Flux2ProEditInput,
    "fal-ai/flux-2": Flux2Input,
    "fal-ai/flux-lora": FluxLoraInput,
    "fal-ai/flux-lora/image-to-image": FluxLoraImageToImageInput,
    "fal-ai/flux-2/lora": Flux2LoraInput,
    "fal-ai/flux-2/lora/edit": Flux2LoraEditInput,
    "fal-ai/flux-2-flex": Flux2Input,
    "fal-ai/flux-2/edit": Flux2EditInput,
    "fal-ai/flux-2-flex/edit": Flux2EditInput,
    **{
        f"fal-ai/flux-2/{subpath}": Flux2EditInput if subpath.endswith("/edit") else Flux2Input
        for subpath in FAL_KLEIN_SUBPATHS
    },  # fmt: skip
}
SYNC_TIMEOUT = 600.0  # seconds a synchronous call waits for its job

# What each route can answer besides its success, in fal's error shapes (api/errors.py). An
# ended job that made no images answers as the result route does: 400 (cancelled), 422 (a
# refused prompt or LoRA), 500 (failed), 410 (sync_mode images already handed over).
SUBMIT_ERRORS = (401, 402, 404, 422, 429, 503)
SYNC_ERRORS = error_responses("fal", *SUBMIT_ERRORS, 400, 410, 500, 504)
QUEUE_ERRORS = error_responses("fal", *SUBMIT_ERRORS)
STATUS_ERRORS = error_responses("fal", 401, 404, 422, 503)
RESULT_ERRORS = error_responses("fal", 400, 401, 404, 410, 422, 500, 503)
CANCEL_ERRORS = {
    400: {"model": CancelStatus, "description": "The request has already ended."},
    404: {"model": CancelStatus, "description": "No such request."},
    **error_responses("fal", 401, 503),
}


def _fal_webhook(url: str | None) -> str | None:
    problem = url_problem(url) if url is not None else None
    if problem is not None:
        raise ValueError(f"fal_webhook {problem}")
    return url


FalWebhook = Annotated[
    str | None,
    Query(description="URL to POST the result to when the request ends (as fal's)."),
    AfterValidator(_fal_webhook),
]


def fal_error(status: int, detail: str, error_type: str) -> JSONResponse:
    body = {"detail": detail, "error_type": error_type}
    return JSONResponse(body, status_code=status, headers={"X-Fal-Error-Type": error_type})


def input_model(endpoint: str) -> type[_Base]:
    return INPUT_MODELS.get(endpoint, FluxInput)


def submit_job(endpoint: str, inputs: _Base, services: Services, caller: Submission) -> Job:
    """Route, read the input images, build the request and queue it. Blocks (image
    fetches, decoding, storage): async routes call it in the thread pool."""
    spec = services.router.route(endpoint, raw=getattr(inputs, "raw", False))
    request, prepared = convert.build_request(
        endpoint, inputs, spec, services.images, services.settings.ultra_megapixels
    )
    request = services.loras.attach(request, lora_wants(getattr(inputs, "loras", None)))
    parts = prepared.parts() if prepared else ()
    return services.jobs.submit(request, *parts, submission=caller)


def output_for(services: Services, job: Job, base: str) -> Output | JSONResponse:
    """The output object of an ended job, or fal's error for one that did not succeed.

    Reads files (sync_mode), so async routes call it in the thread pool.
    """
    failure = convert.failure_of(job)
    if failure is not None:
        return fal_error(failure.status, failure.detail, failure.error_type)
    if not job.request.inline_images:
        return convert.to_output(job, services.jobs.result_urls(job, base))
    uris = services.jobs.take_inline_images(job)
    if uris is None:
        return fal_error(
            410, "The images of this sync_mode request were returned once and not kept", "gone"
        )
    return convert.to_output(job, uris)


def make_sync(endpoint: str) -> Callable[..., Any]:
    inputs_type = input_model(endpoint)

    async def run_sync(
        inputs: inputs_type,
        services: ServicesDep,
        base: BaseUrlDep,
        http_request: Request,
        caller: SubmitterDep,
    ):
        job = await run_in_threadpool(submit_job, endpoint, inputs, services, caller)
        try:
            job = await services.jobs.wait(job.id, SYNC_TIMEOUT, abandoned(http_request, caller))
        except TimeoutError:
            return fal_error(504, "Request timed out", "request_timeout")
        return await run_in_threadpool(output_for, services, job, base)

    run_sync.__doc__ = f"Run {endpoint} and answer with its output (as fal.run)."
    return run_sync


def make_submit(endpoint: str, app_id: str) -> Callable[..., Any]:
    inputs_type = input_model(endpoint)

    async def submit(
        inputs: inputs_type,
        services: ServicesDep,
        base: BaseUrlDep,
        caller: SubmitterDep,
        fal_webhook: FalWebhook = None,
    ):
        caller = convert.with_webhook(caller, fal_webhook, base)
        job = await run_in_threadpool(submit_job, endpoint, inputs, services, caller)
        position = await services.jobs.read(services.jobs.queue_position, job) or 0
        return convert.to_submitted(job, convert.QueueUrls(base, app_id, job.id), position)

    submit.__doc__ = f"Queue a request to {endpoint} (as queue.fal.run)."
    return submit


def make_status(app_id: str) -> Callable[..., Any]:
    async def status(
        request_id: str,
        services: ServicesDep,
        base: BaseUrlDep,
        key: CallerDep,
        logs: bool = Query(False),
    ):
        job = await services.jobs.read(services.jobs.get, request_id, owner_of(key))
        if job is None:
            return fal_error(404, f"Request {request_id} not found", "not_found")
        position = await services.jobs.read(services.jobs.queue_position, job)
        urls = convert.QueueUrls(base, app_id, job.id)
        return convert.to_status(job, urls, position, logs)

    status.__doc__ = "A queued request's status: IN_QUEUE, IN_PROGRESS or COMPLETED."
    return status


def make_result(app_id: str) -> Callable[..., Any]:
    async def result(request_id: str, services: ServicesDep, base: BaseUrlDep, key: CallerDep):
        job = await services.jobs.read(services.jobs.get, request_id, owner_of(key))
        if job is None:
            return fal_error(404, f"Request {request_id} not found", "not_found")
        if not job.status.is_terminal:
            return fal_error(400, "Request is still in progress", "still_in_progress")
        output = await run_in_threadpool(output_for, services, job, base)
        if isinstance(output, JSONResponse):
            return output
        content = output.model_dump(mode="json")
        return JSONResponse(content, headers={"x-fal-request-id": job.id})

    result.__doc__ = "The output of a completed request."
    return result


def make_cancel(app_id: str) -> Callable[..., Any]:
    async def cancel(request_id: str, services: ServicesDep, key: CallerDep):
        job = await services.jobs.read(services.jobs.get, request_id, owner_of(key))
        if job is None:
            return JSONResponse({"status": "NOT_FOUND"}, status_code=404)
        if job.status.is_terminal:
            return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)
        after = await run_in_threadpool(services.jobs.cancel, request_id, owner_of(key))
        if after in (JobStatus.RUNNING, JobStatus.CANCELLED):
            return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)
        # It ended on its own between the look and the cancel.
        return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)

    cancel.__doc__ = "Cancel a queued request, or stop a running one at its next step."
    return cancel


def _register() -> None:
    for app_id, subpaths in FAL_APPS.items():
        for subpath in subpaths:
            endpoint = f"{app_id}/{subpath}" if subpath else app_id
            router.add_api_route(
                f"/{endpoint}",
                make_sync(endpoint),
                methods=["POST"],
                response_model=Output,
                responses=SYNC_ERRORS,
            )
            router.add_api_route(
                f"/queue/{endpoint}",
                make_submit(endpoint, app_id),
                methods=["POST"],
                response_model=QueueSubmitted,
                responses=QUEUE_ERRORS,
            )
        # Status, result and cancel without the subpath (fal's rule) and with it.
        for prefix in [app_id, *(f"{app_id}/{sub}" for sub in subpaths if sub)]:
            root = f"/queue/{prefix}/requests/{{request_id}}"
            router.add_api_route(
                f"{root}/status",
                make_status(app_id),
                methods=["GET"],
                response_model=QueueStatus,
                responses=STATUS_ERRORS,
            )
            router.add_api_route(
                root,
                make_result(app_id),
                methods=["GET"],
                response_model=Output,
                responses=RESULT_ERRORS,
            )
            router.add_api_route(
                f"{root}/cancel",
                make_cancel(app_id),
                methods=["PUT"],
                status_code=202,
                response_model=CancelStatus,
                responses=CANCEL_ERRORS,
            )


_register()
