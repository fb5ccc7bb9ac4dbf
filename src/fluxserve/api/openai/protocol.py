"""OpenAI Images wire models, as openai-python sends them (api-compat.md §3).

Unknown fields are accepted and ignored; FLUX's own knobs (seed, steps, guidance) ride along
as extra body fields (the SDK's ``extra_body``).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from fluxserve.api.validators import NotBool, ValidText
from fluxserve.domain import MAX_SEED

SIZE_STEP = 16
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


class ImagesGenerateRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: Annotated[str, ValidText] = Field(
        min_length=1, max_length=32000, description="What to draw."
    )
    model: str | None = Field(None, description="A loaded model; default: the first loaded.")
    n: Annotated[int, Field(ge=1, le=10), NotBool] = Field(1, description="Images, one batch.")
    size: Annotated[str, AfterValidator(_check_size)] = Field(
        "auto", description="WIDTHxHEIGHT (multiples of 16, 256-2048) or auto (1024x1024)."
    )
    response_format: Literal["url", "b64_json"] = "url"
    output_format: Literal["png", "jpeg", "webp"] = "png"
    quality: Literal["standard", "hd", "low", "medium", "high", "auto"] | None = None
    style: Literal["vivid", "natural"] | None = None
    background: Literal["opaque", "auto"] | None = Field(
        None, description="'transparent' is not supported: FLUX draws opaque images."
    )
    moderation: Literal["low", "auto"] | None = None
    output_compression: Annotated[int, Field(ge=0, le=100), NotBool] | None = None
    user: str | None = None
    stream: Literal[False] | None = Field(None, description="Streaming is not supported.")
    partial_images: Annotated[int, Field(ge=0, le=0), NotBool] | None = None
    # FLUX extras
    seed: Annotated[int, Field(ge=0, le=MAX_SEED), NotBool] | None = None
    steps: Annotated[int, Field(ge=1, le=50), NotBool] | None = None
    guidance: Annotated[float, Field(ge=1.5, le=5.0), NotBool] | None = None


class ImageData(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: str | None = None


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]
