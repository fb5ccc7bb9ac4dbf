"""BFL wire models, after BFL's official OpenAPI spec (shared/reference/bfl-openapi.json).

Unknown fields are accepted and ignored: real clients send extras (api-compat.md §0.2).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from fluxserve.api.validators import NotBool, multiple_of, valid_text
from fluxserve.domain import MAX_SEED

DIMENSION_STEP = 32


def _prompt_text(value: str | None) -> str:
    if value is None:  # BFL's schema allows null: no prompt
        return ""
    return valid_text(value)


Prompt = Annotated[str | None, AfterValidator(_prompt_text)]
Dimension = Annotated[
    int,
    Field(ge=256, le=1440, description="Pixels; 256-1440, a multiple of 32."),
    AfterValidator(multiple_of(DIMENSION_STEP)),
    NotBool,
]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED), NotBool]
Steps = Annotated[int, Field(ge=1, le=50), NotBool]
Guidance = Annotated[float, Field(ge=1.5, le=5.0), NotBool]
OutputFormatName = Literal["jpeg", "png", "webp"]


class _Inputs(BaseModel):
    """Fields every BFL text-to-image endpoint takes."""

    model_config = ConfigDict(extra="allow")

    prompt: Prompt = Field("", description="What to draw.")
    image_prompt: str | None = Field(
        None, description="Base64 image to use as a prompt (FLUX Redux); not served yet."
    )
    width: Dimension = 1024
    height: Dimension = 768
    seed: Seed | None = Field(None, description="0..2^64-1; random when absent.")
    safety_tolerance: Annotated[int, Field(ge=0, le=6), NotBool] = Field(
        2, description="0 (strictest) to 6."
    )
    output_format: OutputFormatName | None = Field("jpeg", description="jpeg, png or webp.")
    prompt_upsampling: bool = Field(False, description="Rewrite the prompt before generating.")
    webhook_url: str | None = Field(None, min_length=1, max_length=2083)
    webhook_secret: str | None = None


class FluxDevInputs(_Inputs):
    steps: Steps | None = Field(None, description="Denoising steps; default 28.")
    guidance: Guidance | None = Field(None, description="Guidance strength; default 3.0.")


class FluxSchnellInputs(_Inputs):
    steps: Steps | None = Field(
        None, description="Denoising steps; default 4, at most 12 on FLUX.1 [schnell]."
    )
    guidance: Guidance | None = Field(
        None, description="Accepted for compatibility; schnell does not use it."
    )


class FluxPro11Inputs(_Inputs):
    """FLUX1.1 [pro] has no steps or guidance: the serving model's defaults apply."""


class FluxProInputs(_Inputs):
    steps: Steps | None = Field(None, description="Denoising steps.")
    guidance: Guidance | None = Field(None, description="Guidance strength.")
    interval: Annotated[float, Field(ge=1, le=4), NotBool] | None = Field(
        None, description="Accepted for compatibility; not used."
    )


class AsyncResponse(BaseModel):
    id: str
    polling_url: str
    cost: float | None = None
    input_mp: float | None = None
    output_mp: float | None = None


ResultStatus = Literal[
    "Task not found", "Pending", "Request Moderated", "Content Moderated", "Ready", "Error"
]


class ResultResponse(BaseModel):
    id: str
    status: ResultStatus
    result: dict[str, Any] | None = None
    progress: float | None = None
    details: dict[str, Any] | None = None
    preview: dict[str, Any] | None = None
