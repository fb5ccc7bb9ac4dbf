"""fal wire <-> domain: the only module that knows both."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from fluxserve.api.fal.protocol import (
    Flux2Input,
    FluxImageToImageInput,
    FluxInput,
    FluxProFillInput,
    FluxProUltraInput,
    Image,
    KontextDevInput,
    Output,
    QueueStatus,
    QueueSubmitted,
    _Base,
    _Flux2Input,
    _Input,
    _KontextProInput,
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
from fluxserve.jobs.service import JobService, Submission
from fluxserve.safety.tolerance import MAX_TOLERANCE
from fluxserve.specs import ModelSpec


def to_generation_request(endpoint: str, inputs: _Input, spec: ModelSpec) -> GenerationRequest:
    """The domain request for ``inputs`` on the model ``spec``; raises InvalidRequest."""
    width, height = inputs.size()
    steps = inputs.num_inference_steps if isinstance(inputs, FluxInput) else None
    guidance = inputs.guidance_scale if isinstance(inputs, FluxInput) else None
    return GenerationRequest(
        width=width,
        height=height,
        steps=_steps(spec, steps),
        guidance=spec.effective_guidance(guidance),
        acceleration=_acceleration(inputs),
        **_common(endpoint, inputs, spec),
    )


def _acceleration(inputs: object) -> str | None:
    """The speed tier the client asked for; None when it did not ask (the model's tier)."""
    # Endpoints without the field keep unknown fields: an "acceleration" there means nothing.
    declared = "acceleration" in getattr(type(inputs), "model_fields", {})
    if not declared or "acceleration" not in inputs.model_fields_set:  # type: ignore[attr-defined]
        return None
    return inputs.acceleration  # type: ignore[attr-defined]


def _steps(spec: ModelSpec, steps: int | None) -> int:
    """``spec.effective_steps``, its error reported under fal's own field name."""
    try:
        return spec.effective_steps(steps)
    except InvalidRequest as exc:
        raise InvalidRequest("num_inference_steps", exc.message, steps) from None


def _common(endpoint: str, inputs: _Base, spec: ModelSpec) -> dict:
    return {
        "model": spec.name,
        "prompt": inputs.prompt,
        "seed": inputs.seed if inputs.seed is not None else random_seed(),
        "output_format": OutputFormat(inputs.output_format),
        "endpoint": endpoint,
        "num_images": inputs.num_images,
        "inline_images": inputs.sync_mode,
        "safety_tolerance": safety_tolerance(inputs),
        "prompt_upsampling": inputs.enhance_prompt,
    }


def safety_tolerance(inputs: _Base) -> int:
    """fal's "1"-"6" on the shared table; ``enable_safety_checker: false`` asks for 6 (the
    server then clamps it to the most it allows)."""
    if getattr(inputs, "enable_safety_checker", True) is False:
        return MAX_TOLERANCE
    return int(getattr(inputs, "safety_tolerance", "2"))


def kontext_dev_request(
    endpoint: str, inputs: KontextDevInput, spec: ModelSpec, reader: ImageReader
) -> tuple[GenerationRequest, Prepared]:
    """Kontext [dev]: edit ``image_url``; ``resolution_mode`` picks the output's shape."""
    image = reader.open(inputs.image_url, "image_url")
    width, height = imageprep.edit_size(spec, inputs.aspect_ratio(), [image], "resolution_mode")
    prepared = imageprep.prepare_edit(spec, [image], width, height, ["image_url"])
    request = GenerationRequest(
        width=width,
        height=height,
        steps=_steps(spec, inputs.num_inference_steps),
        guidance=spec.effective_guidance(inputs.guidance_scale),
        acceleration=_acceleration(inputs),
        task=Task.EDIT,
        **_common(endpoint, inputs, spec),
    )
    return request, prepared


def kontext_pro_request(
    endpoint: str, inputs: _KontextProInput, spec: ModelSpec, reader: ImageReader
) -> tuple[GenerationRequest, Prepared]:
    """Kontext [pro]/[max], served by the loaded Kontext model: one image, several
    (``multi``) or none (``text-to-image``)."""
    named = inputs.references()
    references = [reader.open(value, name) for name, value in named]
    width, height = imageprep.edit_size(spec, inputs.aspect_ratio, references)
    prepared = imageprep.prepare_edit(spec, references, width, height, [n for n, _ in named])
    request = GenerationRequest(
        width=width,
        height=height,
        steps=spec.effective_steps(None),
        guidance=spec.effective_guidance(inputs.guidance_scale),
        task=imageprep.edit_task(spec, prepared),
        **_common(endpoint, inputs, spec),
    )
    return request, prepared


def image_to_image_request(
    endpoint: str, inputs: FluxImageToImageInput, spec: ModelSpec, reader: ImageReader
) -> tuple[GenerationRequest, Prepared]:
    """Image-to-image: the output takes the start image's shape (on the grid, within the
    model's largest size); ``strength`` says how far it is noised."""
    steps = _steps(spec, inputs.num_inference_steps)
    imageprep.check_strength(inputs.strength, steps)
    image = reader.open(inputs.image_url, "image_url")
    width, height = imageprep.input_size(spec, image)
    prepared = imageprep.prepare_image_to_image(image, width, height)
    request = GenerationRequest(
        width=width,
        height=height,
        steps=steps,
        guidance=spec.effective_guidance(inputs.guidance_scale),
        acceleration=_acceleration(inputs),
        task=Task.IMAGE_TO_IMAGE,
        strength=inputs.strength,
        **_common(endpoint, inputs, spec),
    )
    return request, prepared


def fill_request(
    endpoint: str, inputs: FluxProFillInput, spec: ModelSpec, reader: ImageReader
) -> tuple[GenerationRequest, Prepared]:
    """Fill: repaint the white of ``mask_url``, or else the image's transparent pixels."""
    image = reader.open(inputs.image_url, "image_url")
    mask = reader.open(inputs.mask_url, "mask_url") if inputs.mask_url else None
    prepared = imageprep.prepare_fill(spec, image, mask, "image_url", "mask_url")
    request = GenerationRequest(
        width=prepared.width,
        height=prepared.height,
        steps=_steps(spec, inputs.num_inference_steps),
        guidance=spec.effective_guidance(inputs.guidance_scale),
        task=Task.FILL,
        **_common(endpoint, inputs, spec),
    )
    return request, prepared


FLUX2_MAX_TOLERANCE = 5


def flux2_request(
    endpoint: str, inputs: _Flux2Input, spec: ModelSpec, reader: ImageReader
) -> tuple[GenerationRequest, Prepared]:
    """FLUX.2 on fal's ids: text-to-image, or an edit of ``image_urls`` read natively."""
    named = inputs.references()
    names = [name for name, _ in named]
    if len(names) > spec.max_references:  # fal names the list, not the item too many
        raise InvalidRequest(
            "image_urls",
            f"{spec.name} takes at most {spec.max_references} images, got {len(names)}",
            len(names),
        )
    references = [reader.open(value, name) for name, value in named]
    width, height = imageprep.flux2_size(
        spec, *inputs.size(), references, ("image_size", "image_size")
    )
    prepared = imageprep.prepare_edit(spec, references, width, height, names)
    steps = guidance = None
    if isinstance(inputs, Flux2Input):
        steps, guidance = inputs.num_inference_steps, inputs.guidance_scale
    common = _common(endpoint, inputs, spec)
    # FLUX.2's scale ends at 5 ("enable_safety_checker": false asks for the most).
    common["safety_tolerance"] = min(common["safety_tolerance"], FLUX2_MAX_TOLERANCE)
    if isinstance(inputs, Flux2Input) and inputs.enable_prompt_expansion:
        common["prompt_upsampling"] = True
    request = GenerationRequest(
        width=width,
        height=height,
        steps=_steps(spec, steps),
        guidance=spec.effective_guidance(guidance),
        acceleration=_acceleration(inputs),
        task=imageprep.edit_task(spec, prepared),
        **common,
    )
    return request, prepared


def ultra_request(
    endpoint: str, inputs: FluxProUltraInput, spec: ModelSpec, reader: ImageReader,
    megapixels: float,
) -> tuple[GenerationRequest, Prepared | None]:  # fmt: skip
    """Ultra, as BFL's route: about 4 MP on FLUX.2 (else ``megapixels``), ``raw`` on Krea,
    ``image_url`` at ``1 - image_prompt_strength`` denoise (FLUX.2: a reference)."""
    width, height, size_note = imageprep.ultra_size(spec, inputs.aspect_ratio, megapixels)
    steps = spec.effective_steps(None)
    request = GenerationRequest(
        width=width,
        height=height,
        steps=steps,
        guidance=spec.effective_guidance(None),
        notes=(size_note, *imageprep.raw_notes(spec, inputs.raw)),
        **_common(endpoint, inputs, spec),
    )
    if inputs.image_url is None:
        return request, None
    url = inputs.image_url
    return imageprep.apply_image_prompt(
        request, spec, lambda: reader.open(url, "image_url"), 1.0 - inputs.image_prompt_strength,
        "image_url", "image_prompt_strength",
    )  # fmt: skip


def build_request(
    endpoint: str, inputs: _Base, spec: ModelSpec, reader: ImageReader,
    ultra_megapixels: float = 2.0,
) -> tuple[GenerationRequest, Prepared | None]:  # fmt: skip
    """The domain request for any fal input, with its prepared input images (None for
    text-to-image). Reads images (network, decoding): call it from a worker thread."""
    if isinstance(inputs, KontextDevInput):
        return kontext_dev_request(endpoint, inputs, spec, reader)
    if isinstance(inputs, _KontextProInput):
        return kontext_pro_request(endpoint, inputs, spec, reader)
    if isinstance(inputs, FluxImageToImageInput):
        return image_to_image_request(endpoint, inputs, spec, reader)
    if isinstance(inputs, FluxProFillInput):
        return fill_request(endpoint, inputs, spec, reader)
    if isinstance(inputs, _Flux2Input):
        return flux2_request(endpoint, inputs, spec, reader)
    if isinstance(inputs, FluxProUltraInput):
        return ultra_request(endpoint, inputs, spec, reader, ultra_megapixels)
    assert isinstance(inputs, _Input), type(inputs)
    return to_generation_request(endpoint, inputs, spec), None


def to_output(job: Job, image_urls: list[str]) -> Output:
    request = job.request
    content_type = request.output_format.content_type
    images = [
        Image(url=url, width=request.width, height=request.height, content_type=content_type)
        for url in image_urls
    ]
    return Output(
        images=images,
        timings={"inference": inference_seconds(job)},
        seed=request.seed,
        has_nsfw_concepts=[i in job.report.blocked_outputs for i in range(len(images))],
        prompt=job.effective_prompt,
    )


def inference_seconds(job: Job) -> float:
    if job.started_at is None or job.finished_at is None:
        return 0.0
    return round(job.finished_at - job.started_at, 6)


class QueueUrls:
    """The absolute status, result and cancel URLs of one request (no subpath in them)."""

    def __init__(self, base_url: str, app_id: str, request_id: str) -> None:
        root = f"{base_url}/queue/{app_id}/requests/{request_id}"
        self.response_url = root
        self.status_url = f"{root}/status"
        self.cancel_url = f"{root}/cancel"


def to_submitted(job: Job, urls: QueueUrls, position: int) -> QueueSubmitted:
    return QueueSubmitted(
        request_id=job.id,
        response_url=urls.response_url,
        status_url=urls.status_url,
        cancel_url=urls.cancel_url,
        queue_position=position,
        gateway_request_id=job.id if job.webhook else None,
    )


def with_webhook(submission: Submission, fal_webhook: str | None, base_url: str) -> Submission:
    """``submission`` plus the webhook of the queue submit's ``?fal_webhook=``, if any."""
    if fal_webhook is None:
        return submission
    webhook = Webhook(fal_webhook, "fal", None, base_url)
    return dataclasses.replace(submission, webhook=webhook)


FAILED_STATUS = {JobStatus.CANCELLED: 400, JobStatus.FAILED: 500}


@dataclass(frozen=True)
class Failure:
    """Why an ended job has no output, as fal's result route answers it."""

    status: int  # the HTTP status
    detail: str
    error_type: str


def failure_of(job: Job) -> Failure | None:
    """The error the result of an ended ``job`` is, or None when it has images."""
    if job.status is JobStatus.REQUEST_MODERATED:
        message = job.error_message or "The request was refused by the content policy."
        return Failure(422, message, "content_policy_violation")
    # A blocked output is a black image flagged in has_nsfw_concepts, even when every
    # image of the request was blocked: fal never fails a batch for its content.
    if job.status not in (JobStatus.SUCCEEDED, JobStatus.CONTENT_MODERATED):
        message = job.error_message or "The request did not complete."
        status = FAILED_STATUS.get(job.status, 500)
        if (job.error_code or "").startswith("lora_"):  # the request's LoRA, not the server
            status = 422
        return Failure(status, message, job.error_code or "error")
    return None


def webhook_payload(job: Job, images: list[str]) -> dict[str, Any]:
    """The body POSTed to ``?fal_webhook=`` when ``job`` ends, as fal sends it:
    ``request_id``, ``gateway_request_id``, ``status`` OK with the result body as
    ``payload``, or ERROR with the error body as ``payload`` and ``error`` naming the
    status code the result route answers."""
    base = {"request_id": job.id, "gateway_request_id": job.id}
    failure = failure_of(job)
    if failure is not None:
        payload = {"detail": failure.detail, "error_type": failure.error_type}
        error = f"Invalid status code: {failure.status}"
        return {**base, "status": "ERROR", "payload": payload, "error": error}
    output = to_output(job, images).model_dump(mode="json")
    return {**base, "status": "OK", "payload": output, "error": None}


def _log(message: str, when: float) -> dict[str, str]:
    timestamp = dt.datetime.fromtimestamp(when, dt.UTC).isoformat()
    return {"message": message, "level": "INFO", "source": "USER", "timestamp": timestamp}


def progress_logs(job: Job) -> list[dict[str, str]]:
    """Step progress as fal log lines: fal's clients show ``logs``, not a progress field."""
    if job.started_at is None:
        return []
    steps = job.request.steps
    done = round(job.progress * steps)
    logs = [_log(f"Generating {job.request.num_images} image(s), {steps} steps", job.started_at)]
    if done:  # the step's own time is not stored; this is when it was reported
        logs.append(_log(f"Step {done}/{steps} ({job.progress:.0%})", time.time()))
    return logs


def to_status(job: Job, urls: QueueUrls, position: int | None, with_logs: bool) -> QueueStatus:
    base = {
        "request_id": job.id,
        "response_url": urls.response_url,
        "status_url": urls.status_url,
        "cancel_url": urls.cancel_url,
    }
    logs = progress_logs(job) if with_logs else None
    if job.status is JobStatus.QUEUED:
        return QueueStatus(status="IN_QUEUE", queue_position=position or 0, **base)
    if job.status is JobStatus.RUNNING:
        return QueueStatus(status="IN_PROGRESS", logs=logs, **base)
    error = error_type = None
    if job.status is JobStatus.REQUEST_MODERATED:  # as the result endpoint's 422 says
        error_type = "content_policy_violation"
        error = job.error_message or "The request was refused by the content policy."
    elif job.status not in (JobStatus.SUCCEEDED, JobStatus.CONTENT_MODERATED):
        error_type = job.error_code or job.status.value
        error = job.error_message or "The request did not complete."
    return QueueStatus(
        status="COMPLETED",
        logs=logs,
        metrics={"inference_time": inference_seconds(job)},
        error=error,
        error_type=error_type,
        **base,
    )


def webhook_body(job: Job, jobs: JobService, base_url: str) -> dict[str, Any]:
    """fal's webhook body for ``job`` (registered with the services by api/app.py); a
    ``sync_mode`` job's images go inline as ``data:`` URIs, as its result has them."""
    inline = job.request.inline_images
    images = jobs.data_uris(job) if inline else jobs.result_urls(job, base_url)
    return webhook_payload(job, images)
