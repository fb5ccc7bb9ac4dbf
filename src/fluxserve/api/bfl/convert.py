"""BFL wire <-> domain: the only module that knows both."""

from __future__ import annotations

import logging

from fluxserve.api.bfl.protocol import AsyncResponse, ResultResponse, _Inputs
from fluxserve.domain import GenerationRequest, Job, JobStatus, OutputFormat, random_seed
from fluxserve.errors import InvalidRequest
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
    """The domain request for ``inputs`` on the model ``spec``; raises InvalidRequest."""
    if inputs.image_prompt is not None:
        raise InvalidRequest(
            "image_prompt", "image_prompt (FLUX Redux) is not supported by this server yet"
        )
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
        seed=inputs.seed if inputs.seed is not None else random_seed(),
        output_format=OutputFormat(inputs.output_format or "jpeg"),
        safety_tolerance=inputs.safety_tolerance,
        prompt_upsampling=inputs.prompt_upsampling,
        endpoint=endpoint,
    )


def polling_url(base_url: str, job_id: str) -> str:
    return f"{base_url}/v1/get_result?id={job_id}"


def to_async_response(job: Job, base_url: str) -> AsyncResponse:
    request = job.request
    return AsyncResponse(
        id=job.id,
        polling_url=polling_url(base_url, job.id),
        cost=0.0,
        input_mp=0.0,
        output_mp=round(request.width * request.height / 1e6, 2),
    )


def to_result_response(job: Job, sample_urls: list[str]) -> ResultResponse:
    status = STATUS_NAMES[job.status]
    response = ResultResponse(id=job.id, status=status)
    if job.status is JobStatus.SUCCEEDED:
        start, end = job.started_at or job.created_at, job.finished_at or job.created_at
        response.result = {
            "sample": sample_urls[0] if sample_urls else None,
            "prompt": job.request.prompt,
            "seed": job.request.seed,
            "start_time": start,
            "end_time": end,
            "duration": round(end - start, 6),
        }
        response.progress = 1.0
    elif job.status in (JobStatus.QUEUED, JobStatus.RUNNING):
        response.progress = round(job.progress, 4)
    else:
        code = job.error_code or job.status.value
        message = job.error_message or (
            "Task cancelled" if job.status is JobStatus.CANCELLED else status
        )
        response.details = {"code": code, "message": message}
    return response


def not_found(job_id: str) -> ResultResponse:
    return ResultResponse(id=job_id, status="Task not found")
