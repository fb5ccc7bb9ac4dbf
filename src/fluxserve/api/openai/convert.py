"""OpenAI wire <-> domain: the only module that knows both."""

from __future__ import annotations

import base64

from fluxserve.api.openai.protocol import (
    ImageData,
    ImagesGenerateRequest,
    ImagesResponse,
    ModelList,
    ModelObject,
    parse_size,
)
from fluxserve.domain import GenerationRequest, Job, OutputFormat, random_seed
from fluxserve.errors import InvalidRequest
from fluxserve.jobs.routing import ENDPOINT_KINDS, ModelRouter
from fluxserve.specs import ModelSpec


def resolve_model(router: ModelRouter, name: str | None) -> ModelSpec:
    """The loaded model ``name`` stands for: a loaded model's name or hub id, or an endpoint
    name the router serves (flux-dev, an --alias...); the first loaded model when absent."""
    models = router.models
    if name is None:
        return next(iter(models.values()))
    for spec in models.values():
        if name in (spec.name, spec.source):
            return spec
    if name in ENDPOINT_KINDS or name in router.aliases:
        return router.route(name)
    raise InvalidRequest(
        "model",
        f"The model {name!r} is not served here; this server has {', '.join(models)}.",
        name,
    )


def to_generation_request(body: ImagesGenerateRequest, spec: ModelSpec) -> GenerationRequest:
    width, height = parse_size(body.size)
    return GenerationRequest(
        model=spec.name,
        prompt=body.prompt,
        width=width,
        height=height,
        steps=spec.effective_steps(body.steps),
        guidance=spec.effective_guidance(body.guidance),
        seed=body.seed if body.seed is not None else random_seed(),
        output_format=OutputFormat(body.output_format),
        endpoint="openai",
        num_images=body.n,
    )


def to_response(job: Job, urls: list[str] | None, images: list[bytes] | None) -> ImagesResponse:
    """``urls`` for response_format=url, else the image bytes for b64_json."""
    prompt = job.request.prompt
    if urls is not None:
        data = [ImageData(url=url, revised_prompt=prompt) for url in urls]
    else:
        data = [
            ImageData(b64_json=base64.b64encode(image).decode("ascii"), revised_prompt=prompt)
            for image in images or []
        ]
    created = int(job.finished_at or job.created_at)
    return ImagesResponse(created=created, data=data, output_format=job.request.output_format.value)


def to_model_list(specs: list[ModelSpec], created: int) -> ModelList:
    return ModelList(
        data=[ModelObject(id=spec.name, created=created, owned_by="fluxserve") for spec in specs]
    )
