"""BFL wire <-> domain: the only module that knows both."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from PIL import Image

from fluxserve.api.bfl.protocol import (
    AsyncResponse,
    ByNameInputs,
    DeleteFinetuneResponse,
    Flux2FlexInputs,
    FluxKontextProInputs,
    FluxProExpandInputs,
    FluxProFillInputs,
    FluxUltraInputs,
    Preview,
    ResultResponse,
    _CommonInputs,
    _Flux2Common,
    _Inputs,
)
from fluxserve.domain import (
    GenerationRequest,
    Job,
    JobStatus,
    OutputFormat,
    Task,
    Webhook,
    random_seed,
)
from fluxserve.errors import InvalidRequest
from fluxserve.images.inputs import ImageReader
from fluxserve.jobs import imageprep
from fluxserve.jobs.imageprep import Prepared
from fluxserve.jobs.loras import RegisteredLora
from fluxserve.jobs.pricing import PriceTable
from fluxserve.jobs.service import JobService, Submission
from fluxserve.lora.sources import describe
from fluxserve.specs import ModelSpec

logger = logging.getLogger(__name__)

STATUS_NAMES: dict[JobStatus, str] = {
    JobStatus.QUEUED: "Pending",
    JobStatus.RUNNING: "Pending",
    JobStatus.SUCCEEDED: "Ready",
    JobStatus.FAILED: "Error",
    JobStatus.CANCELLED: "Error",
    JobStatus.REQUEST_MODERATED: "Request Moderated",
    JobStatus.CONTENT_MODERATED: "Content Moderated",
}


def to_generation_request(endpoint: str, inputs: _Inputs, spec: ModelSpec) -> GenerationRequest:
    """The domain request for ``inputs`` on the model ``spec`` (text-to-image fields;
    ``with_image_prompt`` adds the start image); raises InvalidRequest."""
    # Only declared fields count: FLUX1.1 [pro] has no steps or guidance, and the copies a
    # client sends anyway sit among the ignored extras.
    declared = type(inputs).model_fields
    steps = getattr(inputs, "steps", None) if "steps" in declared else None
    guidance = getattr(inputs, "guidance", None) if "guidance" in declared else None
    if inputs.model_extra:
        logger.debug("%s: ignoring unknown fields %s", endpoint, sorted(inputs.model_extra))
    return GenerationRequest(
        model=spec.name,
        prompt=inputs.prompt,
        width=inputs.width,
        height=inputs.height,
        steps=spec.effective_steps(steps),
        guidance=spec.effective_guidance(guidance),
        notes=spec.guidance_notes(guidance),
        seed=inputs.seed if inputs.seed is not None else random_seed(),
        output_format=OutputFormat(inputs.output_format or "jpeg"),
        safety_tolerance=inputs.safety_tolerance,
        prompt_upsampling=inputs.prompt_upsampling,
        endpoint=endpoint,
    )


# A dialect route's request builder: (endpoint, inputs, model, image reader) -> the domain
# request and its prepared input images (None: none).
Builder = Callable[[str, Any, ModelSpec, ImageReader], tuple[GenerationRequest, Prepared | None]]


def text_to_image_request(
    endpoint: str, inputs: _Inputs, spec: ModelSpec, reader: ImageReader
) -> tuple[GenerationRequest, Prepared | None]:
    """The FLUX.1 text-to-image routes and ``/v1/{model}``: the fields, plus
    ``image_prompt`` as a start image; on a FLUX.2 model ``image_prompt`` and (by name)
    ``input_image`` ... are its reference images."""
    request = to_generation_request(endpoint, inputs, spec)
    named = [("image_prompt", inputs.image_prompt)] if inputs.image_prompt else []
    named += inputs.references() if isinstance(inputs, ByNameInputs) else []
    if not spec.is_flux2:
        if named and named[-1][0] != "image_prompt":
            raise InvalidRequest(
                named[-1][0],
                f"{spec.name} takes no reference images (FLUX.2 models do); send the start "
                "image as image_prompt for image-to-image",
            )
        return with_image_prompt(request, inputs, reader, spec)
    if not named:
        return request, None
    names = [name for name, _ in named]
    imageprep.check_reference_count(spec, names)
    images = [reader.open(value, name) for name, value in named]
    prepared = imageprep.prepare_edit(spec, images, request.width, request.height, names)
    return dataclasses.replace(request, task=Task.EDIT), prepared


def with_image_prompt(
    request: GenerationRequest, inputs: _Inputs, reader: ImageReader, spec: ModelSpec
) -> tuple[GenerationRequest, Prepared | None]:
    """``image_prompt`` makes the request image-to-image from that start image."""
    if inputs.image_prompt is None:
        return request, None
    strength = inputs.strength if inputs.strength is not None else imageprep.DEFAULT_STRENGTH
    return _image_prompt(request, spec, reader, inputs.image_prompt, strength, "strength")


def _image_prompt(
    request: GenerationRequest, spec: ModelSpec, reader: ImageReader, value: str,
    strength: float, strength_field: str,
) -> tuple[GenerationRequest, Prepared]:  # fmt: skip
    return imageprep.apply_image_prompt(
        request, spec, lambda: reader.open(value, "image_prompt"), strength,
        strength_field=strength_field,
    )  # fmt: skip


def ultra_request(
    endpoint: str, inputs: FluxUltraInputs, spec: ModelSpec, reader: ImageReader,
    megapixels: float,
) -> tuple[GenerationRequest, Prepared | None]:  # fmt: skip
    """Ultra: about 4 MP at ``aspect_ratio`` (FLUX.2), or ``megapixels`` on FLUX.1;
    ``raw`` on FLUX.1 Krea [dev] when the router found it; ``image_prompt`` as on the
    other routes, at ``1 - image_prompt_strength`` denoise."""
    width, height, size_note = imageprep.ultra_size(spec, inputs.aspect_ratio, megapixels)
    notes = (size_note, *imageprep.raw_notes(spec, inputs.raw),
             *spec.guidance_notes(inputs.guidance))  # fmt: skip
    request = GenerationRequest(
        prompt=inputs.prompt,
        width=width,
        height=height,
        steps=spec.effective_steps(inputs.steps),
        guidance=spec.effective_guidance(inputs.guidance),
        notes=notes,
        **_common(endpoint, inputs, spec, "jpeg"),
    )
    if inputs.image_prompt is None:
        return request, None
    strength = 1.0 - inputs.image_prompt_strength
    return _image_prompt(
        request, spec, reader, inputs.image_prompt, strength, "image_prompt_strength"
    )


def _common(endpoint: str, inputs: _CommonInputs, spec: ModelSpec, default_format: str):
    return {
        "model": spec.name,
        "seed": inputs.seed if inputs.seed is not None else random_seed(),
        "output_format": OutputFormat(inputs.output_format or default_format),
        "safety_tolerance": inputs.safety_tolerance,
        "prompt_upsampling": inputs.prompt_upsampling,
        "endpoint": endpoint,
    }


def kontext_request(
    endpoint: str, inputs: FluxKontextProInputs, spec: ModelSpec, reader: ImageReader
) -> tuple[GenerationRequest, Prepared]:
    """Kontext: edit the input image(s) as the prompt says, or draw from text alone (on a
    Kontext model, or natively on a FLUX.2 one)."""
    names, references = _references(inputs, spec, reader)
    size = imageprep.edit_size(spec, inputs.aspect_ratio, references)
    return _edit_request(
        endpoint, inputs, spec, (names, references), size, inputs.steps, inputs.guidance, "png"
    )


def _edit_request(
    endpoint: str, inputs: FluxKontextProInputs | _Flux2Common, spec: ModelSpec,
    named: tuple[list[str], list[Image.Image]], size: tuple[int, int], steps: int | None,
    guidance: float | None, default_format: str,
) -> tuple[GenerationRequest, Prepared]:  # fmt: skip
    """An edit (or, without references, text-to-image) on a Kontext or FLUX.2 model."""
    names, references = named
    prepared = imageprep.prepare_edit(spec, references, *size, names)
    request = GenerationRequest(
        prompt=inputs.prompt,
        width=size[0],
        height=size[1],
        steps=spec.effective_steps(steps),
        guidance=spec.effective_guidance(guidance),
        notes=spec.guidance_notes(guidance),
        task=imageprep.edit_task(spec, prepared),
        **_common(endpoint, inputs, spec, default_format),
    )
    return request, prepared


def _references(
    inputs: FluxKontextProInputs | _Flux2Common, spec: ModelSpec, reader: ImageReader
) -> tuple[list[str], list[Image.Image]]:
    """The reference images' field names and images, counted before any is fetched."""
    named = inputs.references()
    names = [name for name, _ in named]
    imageprep.check_reference_count(spec, names)
    return names, [reader.open(value, name) for name, value in named]


# BFL's FLUX.2 [flex] defaults, for a model that takes guidance; a step-distilled model
# keeps its own (50 steps would only cost time).
FLEX_STEPS, FLEX_GUIDANCE = 50, 5.0


def flux2_request(
    endpoint: str, inputs: _Flux2Common, spec: ModelSpec, reader: ImageReader
) -> tuple[GenerationRequest, Prepared]:
    """FLUX.2: text-to-image, or an edit of up to 8 (4 on [klein]) reference images read
    natively by the model; the size is given, else the first reference's, else square."""
    named = _references(inputs, spec, reader)
    size = imageprep.flux2_size(spec, inputs.width, inputs.height, named[1])
    steps = getattr(inputs, "steps", None)
    guidance = getattr(inputs, "guidance", None)
    if isinstance(inputs, Flux2FlexInputs) and spec.uses_guidance:
        steps = steps or min(FLEX_STEPS, spec.max_steps)
        guidance = guidance if guidance is not None else FLEX_GUIDANCE
    return _edit_request(endpoint, inputs, spec, named, size, steps, guidance, "jpeg")


def fill_request(
    endpoint: str,
    inputs: FluxProFillInputs | FluxProExpandInputs,
    spec: ModelSpec,
    reader: ImageReader,
) -> tuple[GenerationRequest, Prepared]:
    """Fill repaints the mask's white area; Expand grows the canvas and paints the border."""
    image = reader.open(inputs.image, "image")
    if isinstance(inputs, FluxProExpandInputs):
        prepared = imageprep.prepare_expand(
            spec, image, inputs.top, inputs.bottom, inputs.left, inputs.right
        )
    else:
        mask = reader.open(inputs.mask, "mask") if inputs.mask else None
        prepared = imageprep.prepare_fill(spec, image, mask)
    request = GenerationRequest(
        prompt=inputs.prompt,
        width=prepared.width,
        height=prepared.height,
        steps=spec.effective_steps(inputs.steps),
        guidance=spec.effective_guidance(inputs.guidance),
        task=Task.FILL,
        **_common(endpoint, inputs, spec, "jpeg"),
    )
    return request, prepared


def with_previews(request: GenerationRequest, inputs: _CommonInputs) -> GenerationRequest:
    """``request`` with the live previews the body asks for (``previews``), if any."""
    return dataclasses.replace(request, previews=True) if inputs.previews else request


def polling_url(base_url: str, job_id: str) -> str:
    return f"{base_url}/v1/get_result?id={job_id}"


def with_webhook(submission: Submission, inputs: _CommonInputs, base_url: str) -> Submission:
    """``submission`` plus the webhook the body asks for (``webhook_url``), if any."""
    if inputs.webhook_url is None:
        return submission
    webhook = Webhook(inputs.webhook_url, "bfl", inputs.webhook_secret, base_url)
    return dataclasses.replace(submission, webhook=webhook)


def to_async_response(job: Job, base_url: str, prices: PriceTable) -> AsyncResponse:
    """BFL's submit answer: where to poll, and the job's megapixels and cost."""
    request = job.request
    return AsyncResponse(
        id=job.id,
        polling_url=polling_url(base_url, job.id),
        cost=prices.cost(request),
        input_mp=round(request.input_megapixels, 2),
        output_mp=round(request.width * request.height * request.num_images / 1e6, 2),
        # BFL's AsyncWebhookResponse: the task's status and where its end will be sent.
        status="Pending" if job.webhook else None,
        webhook_url=job.webhook.url if job.webhook else None,
    )


def to_result_response(job: Job, sample_urls: list[str]) -> ResultResponse:
    response = _result_response(job, sample_urls)
    if job.report.loras:  # fluxserve extension: where each LoRA came from
        response.details = {**(response.details or {}), "loras": job.report.loras}
    if job.webhook is not None:  # fluxserve extension: how the webhook's delivery went
        webhook = {"state": job.webhook_state, "attempts": job.webhook_attempts,
                   "error": job.webhook_error}  # fmt: skip
        response.details = {**(response.details or {}), "webhook": webhook}
    return response


def webhook_payload(job: Job, sample_urls: list[str]) -> dict[str, Any]:
    """The body POSTed to an ended job's ``webhook_url``: ``id`` and ``task_id`` (both the
    task id), ``status`` SUCCESS or FAILED, ``result`` exactly as get_result has it,
    ``error`` (the message of a task that did not succeed) and get_result's ``details``."""
    response = _result_response(job, sample_urls)
    succeeded = job.status is JobStatus.SUCCEEDED
    error = None
    if not succeeded:
        error = (response.details or {}).get("message") or job.error_message or response.status
    return {
        "id": job.id,
        "task_id": job.id,
        "status": "SUCCESS" if succeeded else "FAILED",
        "result": response.result,
        "error": error,
        "details": response.details,
    }


def _result_response(job: Job, sample_urls: list[str]) -> ResultResponse:
    status = STATUS_NAMES[job.status]
    response = ResultResponse(id=job.id, status=status)
    if job.status is JobStatus.SUCCEEDED:
        start, end = job.started_at or job.created_at, job.finished_at or job.created_at
        response.result = {
            "sample": sample_urls[0] if sample_urls else None,
            "prompt": job.effective_prompt,
            "seed": job.request.seed,
            "start_time": start,
            "end_time": end,
            "duration": round(end - start, 6),
        }
        response.progress = 1.0
        if job.report.notes:  # e.g. the tolerance was lowered, upsampling was unavailable
            response.details = {"notes": job.report.notes}
    elif job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
        response.progress = round(job.progress, 4)
        if job.status is JobStatus.RUNNING and job.preview is not None:
            response.preview = Preview(**job.preview)
    else:
        code = job.error_code or job.status.value
        message = job.error_message or (
            "Task cancelled" if job.status is JobStatus.CANCELLED else status
        )
        response.details = {"code": code, "message": message}
        if job.report.verdicts:  # why a moderated request was refused
            response.details["verdicts"] = [v for v in job.report.verdicts if not v["allowed"]]
        if job.report.notes:
            response.details["notes"] = job.report.notes
    return response


def finetune_details(entry: RegisteredLora) -> dict[str, Any]:
    return {
        "finetune_id": entry.name,
        "source": describe(entry.source),
        "finetune_strength": entry.scale,
        "created_at": dt.datetime.fromtimestamp(entry.created_at, dt.UTC).isoformat(),
    }


def deleted_finetune(finetune_id: str) -> DeleteFinetuneResponse:
    return DeleteFinetuneResponse(
        status="success",
        message=f"Finetune {finetune_id} deleted",
        deleted_finetune_id=finetune_id,
        timestamp=dt.datetime.now(dt.UTC).isoformat(),
    )


def not_found(job_id: str) -> ResultResponse:
    return ResultResponse(id=job_id, status="Task not found")


def webhook_body(job: Job, jobs: JobService, base_url: str) -> dict[str, Any]:
    """BFL's webhook body for ``job`` (registered with the services by api/app.py)."""
    return webhook_payload(job, jobs.result_urls(job, base_url))
