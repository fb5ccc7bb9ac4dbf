"""fal wire <-> domain: the only module that knows both."""

from __future__ import annotations

import datetime as dt
import time

from fluxserve.api.fal.protocol import (
    FluxInput,
    Image,
    Output,
    QueueStatus,
    QueueSubmitted,
    _Input,
)
from fluxserve.domain import GenerationRequest, Job, JobStatus, OutputFormat, random_seed
from fluxserve.errors import InvalidRequest
from fluxserve.specs import ModelSpec


def to_generation_request(endpoint: str, inputs: _Input, spec: ModelSpec) -> GenerationRequest:
    """The domain request for ``inputs`` on the model ``spec``; raises InvalidRequest."""
    width, height = inputs.size()
    steps = inputs.num_inference_steps if isinstance(inputs, FluxInput) else None
    guidance = inputs.guidance_scale if isinstance(inputs, FluxInput) else None
    try:
        effective_steps = spec.effective_steps(steps)
    except InvalidRequest as exc:  # report it under fal's own field name
        raise InvalidRequest("num_inference_steps", exc.message, steps) from None
    return GenerationRequest(
        model=spec.name,
        prompt=inputs.prompt,
        width=width,
        height=height,
        steps=effective_steps,
        guidance=spec.effective_guidance(guidance),
        seed=inputs.seed if inputs.seed is not None else random_seed(),
        output_format=OutputFormat(inputs.output_format),
        safety_tolerance=int(inputs.safety_tolerance),
        endpoint=endpoint,
        num_images=inputs.num_images,
        acceleration=inputs.acceleration if isinstance(inputs, FluxInput) else "none",
        inline_images=inputs.sync_mode,
    )


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
        has_nsfw_concepts=[False] * len(images),  # no safety checker yet
        prompt=request.prompt,
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
    )


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
    if job.status is not JobStatus.SUCCEEDED:
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
