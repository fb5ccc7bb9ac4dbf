"""OpenAI Images wire models, as openai-python sends them (api-compat.md §3).

Unknown fields are accepted and ignored; FLUX's own knobs (seed, steps, guidance, and
strength for edits) ride along as extra body fields (the SDK's ``extra_body``); for an edit
they are form fields like the rest.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from fluxserve.api.validators import LoraList, NotBool, ValidText
from fluxserve.config import MAX_IMAGES_CAP
from fluxserve.domain import MAX_SEED

SIZE_STEP = 16
MAX_MODEL_NAME = 256  # a loaded model's name or hub id, or an endpoint name
MIN_SIDE, MAX_SIDE = 256, 2048
AUTO_SIZE = (1024, 1024)


def parse_size(value: str) -> tuple[int, int]:
    """``WxH`` (both sides 256-2048, multiples of 16) or ``auto``."""
    if value == "auto":
        return AUTO_SIZE
    match = re.fullmatch(r"(\d+)x(\d+)", value, re.ASCII)
    if match is None:
        raise PydanticCustomError(
            "size_format", "Input should be 'auto' or WIDTHxHEIGHT, e.g. 1024x1024"
        )
    sides = int(match[1]), int(match[2])
    for side in sides:
        if not MIN_SIDE <= side <= MAX_SIDE or side % SIZE_STEP:
            raise PydanticCustomError(
                "size_value",
                "Each side should be {low}-{high} pixels and a multiple of {step}",
                {"low": MIN_SIDE, "high": MAX_SIDE, "step": SIZE_STEP},
            )
    return sides


def _check_size(value: str) -> str:
    parse_size(value)
    return value


def _json_in_a_form(value: Any) -> Any:
    """A form field carries text: a list arrives as its JSON."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise PydanticCustomError("json_invalid", "loras must be a JSON list") from None
    return value


class _ImagesOptions(BaseModel):
    """The fields generations and edits share."""

    model_config = ConfigDict(extra="allow")

    # Its longest is --max-prompt-chars (default 10000), checked with every dialect's at
    # submit (jobs/service.py) and shown in the OpenAPI document (api/openapi.py).
    prompt: Annotated[str, ValidText] = Field(min_length=1, description="What to draw.")
    n: Annotated[int, Field(ge=1, le=MAX_IMAGES_CAP), NotBool] = Field(
        1, description="Images, one batch; at most --max-images-per-request (10)."
    )
    response_format: Literal["url", "b64_json"] = "url"
    output_format: Literal["png", "jpeg", "webp"] = "png"
    background: Literal["opaque", "auto"] | None = Field(
        None, description="'transparent' is not supported: FLUX draws opaque images."
    )
    output_compression: Annotated[int, Field(ge=0, le=100), NotBool] | None = None
    user: str | None = Field(None, max_length=256, description="Accepted; not used.")
    partial_images: Annotated[int, Field(ge=0, le=0), NotBool] | None = None
    # FLUX extras
    seed: Annotated[int, Field(ge=0, le=MAX_SEED), NotBool] | None = None
    steps: Annotated[int, Field(ge=1, le=50), NotBool] | None = None
    guidance: Annotated[float, Field(ge=1.5, le=10), NotBool] | None = None
    loras: Annotated[LoraList | None, BeforeValidator(_json_in_a_form)] = Field(
        None,
        description="fluxserve extension, as fal's: [{path, scale}] (in an edit form, that "
        "list as JSON text).",
    )
    safety_tolerance: Annotated[int, Field(ge=0, le=6), NotBool] | None = Field(
        None, description="0 (strictest) to 6; default 2, or 6 with moderation=low."
    )
    prompt_upsampling: bool = Field(
        False, description="Rewrite the prompt first; the rewrite comes back as revised_prompt."
    )
    moderation: Literal["low", "auto"] | None = Field(
        None, description="low asks for safety_tolerance 6 (clamped to the server's most)."
    )

    def tolerance(self) -> int:
        """The safety_tolerance asked for: given, else 6 for moderation=low, else 2."""
        if self.safety_tolerance is not None:
            return self.safety_tolerance
        return 6 if self.moderation == "low" else 2


class ImagesGenerateRequest(_ImagesOptions):
    model: str | None = Field(
        None, max_length=MAX_MODEL_NAME, description="A loaded model; default: the first loaded."
    )
    size: Annotated[str, AfterValidator(_check_size)] = Field(
        "auto", description="WIDTHxHEIGHT (multiples of 16, 256-2048) or auto (1024x1024)."
    )
    quality: Literal["standard", "hd", "low", "medium", "high", "auto"] | None = None
    style: Literal["vivid", "natural"] | None = None
    stream: Literal[False] | None = Field(None, description="Streaming is not supported.")


def _no_streaming(value: bool | None) -> bool | None:
    if value:
        raise PydanticCustomError("streaming", "Streaming is not supported; send false or omit it")
    return value


# Up to this many input images per edit (Kontext references; Fill and image-to-image take one).
MAX_EDIT_IMAGES = 10


class ImagesEditRequest(_ImagesOptions):
    """The text parts of a ``multipart/form-data`` edit; the files (``image`` or repeated
    ``image[]``, and ``mask``) are read apart. Form values are text: numbers are parsed."""

    model: str | None = Field(
        None,
        max_length=MAX_MODEL_NAME,
        description="A loaded model: a Kontext model edits (all images are references), a "
        "text-to-image model runs image-to-image on the one image, a Fill model repaints "
        "the mask's area. Default: with a mask the first Fill model, else the first Kontext "
        "model.",
    )
    size: Annotated[str, AfterValidator(_check_size)] = Field(
        "auto",
        description="WIDTHxHEIGHT (multiples of 16, 256-2048), or auto: from the input image.",
    )
    quality: Literal["standard", "hd", "low", "medium", "high", "xhigh", "max", "auto"] | None = (
        None
    )
    input_fidelity: Literal["high", "low"] | None = Field(None, description="Accepted; not used.")
    stream: Annotated[bool | None, AfterValidator(_no_streaming)] = Field(
        None, description="Streaming is not supported."
    )
    strength: Annotated[float, Field(gt=0, le=1), NotBool] | None = Field(
        None,
        description="fluxserve extension, image-to-image only: how far the image is noised "
        "before denoising (1: only its colours survive); default 0.95.",
    )


def edit_form_schema() -> dict:
    """The OpenAPI schema of the edit form: the text fields and the file parts."""
    schema = ImagesEditRequest.model_json_schema()
    binary = {"type": "string", "format": "binary"}
    files = {
        "image": {**binary, "description": "The image to edit (PNG, JPEG or WebP)."},
        "image[]": {
            "type": "array",
            "items": binary,
            "maxItems": MAX_EDIT_IMAGES,
            "description": "Several images (Kontext references), instead of image.",
        },
        "mask": {
            **binary,
            "description": "Its transparent pixels mark where to edit (without an alpha "
            "channel: white edits, black keeps); the size of the image.",
        },
    }
    return {
        "type": "object",
        "properties": {**files, **schema["properties"]},
        "required": ["prompt"],
    }


class ImageData(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: str | None = None
    # fluxserve: present when the output check left images out ({blocked_images, message}).
    moderation: dict[str, int | str] | None = None


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]
