"""OpenAI wire <-> domain: the only module that knows both."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from fastapi.exceptions import RequestValidationError
from PIL import Image, ImageOps
from pydantic import ValidationError

from fluxserve.api.openai.protocol import (
    MAX_EDIT_IMAGES,
    ImageData,
    ImagesEditRequest,
    ImagesGenerateRequest,
    ImagesResponse,
    ModelList,
    ModelObject,
    parse_size,
)
from fluxserve.domain import GenerationRequest, Job, OutputFormat, Task, random_seed
from fluxserve.errors import InvalidRequest, ModelNotAvailable
from fluxserve.images import ops as imageops
from fluxserve.images.inputs import ImageReader
from fluxserve.jobs import imageprep
from fluxserve.jobs.imageprep import Prepared
from fluxserve.jobs.routing import ENDPOINT_KINDS, KIND_EXAMPLES, ModelRouter
from fluxserve.specs import ModelKind, ModelSpec

logger = logging.getLogger(__name__)

TEXT_TO_IMAGE_KINDS = (ModelKind.DEV, ModelKind.SCHNELL, ModelKind.TEST, ModelKind.KREA)
IMAGE_FIELDS = ("image", "image[]")  # one file, or the SDK's list of files
FILE_FIELDS = (*IMAGE_FIELDS, "mask")


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
        width=width, height=height, steps=spec.effective_steps(body.steps),
        **_common_fields(body, spec),
    )  # fmt: skip


def _common_fields(body: Any, spec: ModelSpec) -> dict[str, Any]:
    """The request fields that generations and edits take alike from their bodies."""
    return {
        "model": spec.name,
        "prompt": body.prompt,
        "guidance": spec.effective_guidance(body.guidance),
        "seed": body.seed if body.seed is not None else random_seed(),
        "output_format": OutputFormat(body.output_format),
        "endpoint": "openai",
        "num_images": body.n,
        "safety_tolerance": body.tolerance(),
        "prompt_upsampling": body.prompt_upsampling,
    }


# -- edits -----------------------------------------------------------------------------------


@dataclass
class EditForm:
    """A parsed edit form: the text fields checked, the files still as bytes."""

    body: ImagesEditRequest
    images: list[bytes] = field(default_factory=list)
    mask: bytes | None = None


def edit_fields(items: Iterable[tuple[str, str]]) -> ImagesEditRequest:
    """The form's text parts as an edit request; a bad or missing field raises FastAPI's
    RequestValidationError, rendered like any other (a 400 in OpenAI's shape)."""
    values: dict[str, str] = {}
    for name, value in items:
        if name in FILE_FIELDS:
            raise InvalidRequest(
                "image" if name in IMAGE_FIELDS else name,
                f"{name} must be an uploaded file (a multipart file part), not text",
            )
        values[name] = value
    try:
        return ImagesEditRequest.model_validate(values)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in errors]
        ) from None


def check_edit_files(form: EditForm) -> None:
    """Image and mask counts the form may carry (before anything is decoded)."""
    if not form.images:
        raise InvalidRequest("image", "image is required: upload the image to edit")
    if len(form.images) > MAX_EDIT_IMAGES:
        raise InvalidRequest(
            "image", f"at most {MAX_EDIT_IMAGES} images, got {len(form.images)}", len(form.images)
        )
    if form.mask is not None and len(form.images) > 1:
        raise InvalidRequest(
            "image",
            f"a mask goes with one image, got {len(form.images)}: send one image with the "
            "mask, or several without it",
        )


def _find_model(router: ModelRouter, name: str) -> ModelSpec | None:
    try:
        return resolve_model(router, name)
    except (InvalidRequest, ModelNotAvailable):
        return None


def _no_model(router: ModelRouter, kind: ModelKind, what: str) -> InvalidRequest:
    return InvalidRequest(
        "model",
        f"No loaded model can {what} (it needs {KIND_EXAMPLES[kind]}); this server has "
        f"{', '.join(router.models)}. Name one of them in model, or start the server with "
        "such a model.",
    )


def edit_model(router: ModelRouter, name: str | None, with_mask: bool) -> ModelSpec:
    """The model an edit runs on.

    With a mask: the named model if it is a Fill model, else the first Fill model. Without:
    the named model (Kontext edits, text-to-image runs image-to-image, Fill fills the
    image's transparent pixels), or the first Kontext model when none is named.
    """
    if with_mask:
        named = _find_model(router, name) if name is not None else None
        if named is not None and named.kind is ModelKind.FILL:
            return named
        spec = router.first_of_kind(ModelKind.FILL)
        if spec is None:
            raise _no_model(router, ModelKind.FILL, "edit with a mask")
        if name is not None and name != spec.name:
            logger.debug("edit with a mask: %r is not a Fill model; using %s", name, spec.name)
        return spec
    if name is None:
        spec = router.first_of_kind(ModelKind.KONTEXT) or router.largest_flux2()
        if spec is None:
            raise _no_model(router, ModelKind.KONTEXT, "edit an image without a mask")
        return spec
    try:
        return resolve_model(router, name)
    except ModelNotAvailable as exc:
        raise InvalidRequest("model", exc.message, name) from None


def _edit_size(body: ImagesEditRequest) -> tuple[int, int] | None:
    """The size asked for; None for auto (the input image decides)."""
    return None if body.size == "auto" else parse_size(body.size)


def _alpha_or_luminance_mask(mask: Image.Image, image: Image.Image) -> Image.Image:
    """OpenAI's mask: transparent pixels mark the edit. One without transparency is read as
    FLUX's black-and-white mask (white edits)."""
    if not imageops.has_transparency(mask):
        return imageops.normalise_mask(mask, image, "mask")
    if mask.size != image.size:
        raise InvalidRequest(
            "mask",
            f"mask is {mask.size[0]}x{mask.size[1]} but the image is "
            f"{image.size[0]}x{image.size[1]}; they must match",
        )
    return imageops.mask_from_alpha(mask)


def _fill(spec: ModelSpec, body: ImagesEditRequest, image: Image.Image,
          mask: Image.Image | None) -> Prepared:  # fmt: skip
    prepared = imageprep.prepare_fill(spec, image, mask)
    size = _edit_size(body)
    if size is None or size == (prepared.width, prepared.height):
        return prepared
    # Image and mask cropped alike to the asked shape, so the mask still lines up.
    (fitted,) = prepared.images
    fitted = ImageOps.fit(fitted, size, imageprep.RESAMPLE)
    assert prepared.mask is not None
    mask = ImageOps.fit(prepared.mask, size, Image.Resampling.NEAREST)
    return Prepared(size[0], size[1], [fitted], mask)


def to_edit_request(
    form: EditForm, router: ModelRouter, reader: ImageReader
) -> tuple[GenerationRequest, Prepared]:
    """The domain request and its prepared inputs for an edit (decodes the uploads: call it
    from a worker thread); raises InvalidRequest naming the field at fault."""
    body = form.body
    check_edit_files(form)
    spec = edit_model(router, body.model, form.mask is not None)
    steps = spec.effective_steps(body.steps)
    if body.model_extra:
        logger.debug("images/edits: ignoring unknown fields %s", sorted(body.model_extra))
    names = ["image"] if len(form.images) == 1 else [f"image[{i}]" for i in range(len(form.images))]
    imageprep.check_reference_count(spec, names)
    if spec.kind in (ModelKind.FILL, *TEXT_TO_IMAGE_KINDS) and len(form.images) > 1:
        raise InvalidRequest(
            "image",
            f"{spec.name} edits one image, got {len(form.images)}; several images are "
            "references for a Kontext model",
        )
    images = [reader.open_bytes(data, name) for data, name in zip(form.images, names, strict=True)]
    strength = None
    if spec.kind is ModelKind.FILL:
        task = Task.FILL
        mask = None
        if form.mask is not None:
            mask = _alpha_or_luminance_mask(reader.open_bytes(form.mask, "mask"), images[0])
        prepared = _fill(spec, body, images[0], mask)
    elif spec.kind is ModelKind.KONTEXT:
        task = Task.EDIT
        width, height = _edit_size(body) or imageprep.edit_size(spec, None, images)
        prepared = imageprep.prepare_edit(spec, images, width, height, names)
    elif spec.is_flux2:  # every image a reference, read natively
        task = Task.EDIT
        width, height = _edit_size(body) or imageprep.flux2_size(spec, None, None, images)
        prepared = imageprep.prepare_edit(spec, images, width, height, names)
    else:
        task = Task.IMAGE_TO_IMAGE
        strength = body.strength if body.strength is not None else imageprep.DEFAULT_STRENGTH
        imageprep.check_strength(strength, steps)
        width, height = _edit_size(body) or imageprep.input_size(spec, images[0])
        prepared = imageprep.prepare_image_to_image(images[0], width, height)
    request = GenerationRequest(
        width=prepared.width,
        height=prepared.height,
        steps=steps,
        **_common_fields(body, spec),
        task=task,
        strength=strength,
    )
    return request, prepared


def refused_param(job: Job) -> str | None:
    """The field a content-policy refusal is about: the prompt, an input image, or none
    (every output was blocked)."""
    refused = [v["point"] for v in job.report.verdicts if not v["allowed"]]
    point = refused[0] if refused else "prompt"
    if point.startswith("input:"):
        return "image"
    return None if point.startswith("output:") else "prompt"


def to_response(job: Job, urls: list[str] | None, images: list[bytes] | None) -> ImagesResponse:
    """``urls`` for response_format=url, else the image bytes for b64_json.

    Images the output check blocked are left out, and ``moderation`` says how many.
    """
    prompt = job.effective_prompt
    blocked = set(job.report.blocked_outputs)
    if urls is not None:
        data = [ImageData(url=url, revised_prompt=prompt) for url in urls]
    else:
        data = [
            ImageData(b64_json=base64.b64encode(image).decode("ascii"), revised_prompt=prompt)
            for image in images or []
        ]
    data = [item for index, item in enumerate(data) if index not in blocked]
    moderation = None
    if blocked:
        moderation = {
            "blocked_images": len(blocked),
            "message": f"{len(blocked)} of the {len(blocked) + len(data)} images were "
            "blocked by the content policy and left out.",
        }
    created = int(job.finished_at or job.created_at)
    return ImagesResponse(
        created=created,
        data=data,
        output_format=job.request.output_format.value,
        moderation=moderation,
    )


def to_model_list(specs: list[ModelSpec], created: int) -> ModelList:
    return ModelList(
        data=[ModelObject(id=spec.name, created=created, owned_by="fluxserve") for spec in specs]
    )
