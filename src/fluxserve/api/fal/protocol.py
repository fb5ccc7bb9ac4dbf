"""fal wire models, after fal's published input/output types (api-compat.md §2.5-2.6).

Unknown fields are accepted and ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from fluxserve.api.validators import NotBool, ValidText, multiple_of
from fluxserve.domain import MAX_SEED

SIZE_STEP = 16  # 8x VAE, then 2x2 patches
IMAGE_SIZE_PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}


Side = Annotated[
    int,
    Field(ge=256, le=2048, description="Pixels; 256-2048, a multiple of 16."),
    AfterValidator(multiple_of(SIZE_STEP)),
    NotBool,
]


class ImageSize(BaseModel):
    width: Side
    height: Side


def _preset_to_size(value: Any) -> Any:
    """A preset name becomes its {width, height}; anything else is validated as an object."""
    if isinstance(value, str):
        if value not in IMAGE_SIZE_PRESETS:
            raise PydanticCustomError(
                "image_size_preset",
                "Input should be one of {presets}, or an object {{width, height}}",
                {"presets": ", ".join(IMAGE_SIZE_PRESETS)},
            )
        width, height = IMAGE_SIZE_PRESETS[value]
        return {"width": width, "height": height}
    return value


class _Input(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt: Annotated[str, ValidText] = Field(description="What to draw.")
    image_size: Annotated[ImageSize, BeforeValidator(_preset_to_size)] = Field(
        default_factory=lambda: ImageSize(width=1024, height=768),
        description="A preset (square_hd, square, portrait_4_3, portrait_16_9, landscape_4_3, "
        "landscape_16_9) or {width, height}; default landscape_4_3.",
    )
    seed: Annotated[int, Field(ge=0, le=MAX_SEED), NotBool] | None = Field(
        None, description="0..2^64-1; random when absent."
    )
    sync_mode: bool = Field(False, description="Return images as data: URIs and keep none.")
    num_images: Annotated[int, Field(ge=1, le=4), NotBool] = Field(
        1, description="Images to make, as one batch."
    )
    output_format: Literal["jpeg", "png"] = "jpeg"
    enable_safety_checker: bool = Field(True, description="Accepted; safety checks come later.")
    safety_tolerance: Literal["1", "2", "3", "4", "5", "6"] = Field(
        "2", description="1 (strictest) to 6, as a string."
    )

    def size(self) -> tuple[int, int]:
        return self.image_size.width, self.image_size.height


class FluxInput(_Input):
    """``fal-ai/flux/dev`` and ``fal-ai/flux/schnell`` (and their ``flux-1`` twins)."""

    num_inference_steps: Annotated[int, Field(ge=1, le=50), NotBool] | None = Field(
        None, description="Default 28 on dev, 4 on schnell (at most 12)."
    )
    guidance_scale: Annotated[float, Field(ge=1, le=20), NotBool] = Field(
        3.5, description="Guidance strength; schnell does not use it."
    )
    acceleration: Literal["none", "regular", "high"] = "none"


class FluxProV11Input(_Input):
    """``fal-ai/flux-pro/v1.1``: no steps or guidance; the serving model's defaults apply."""

    enhance_prompt: bool = False


class Image(BaseModel):
    url: str
    width: int
    height: int
    content_type: str


class Output(BaseModel):
    images: list[Image]
    timings: dict[str, float]
    seed: int
    has_nsfw_concepts: list[bool]
    prompt: str


class QueueSubmitted(BaseModel):
    status: Literal["IN_QUEUE"] = "IN_QUEUE"
    request_id: str
    response_url: str
    status_url: str
    cancel_url: str
    queue_position: int


class QueueStatus(BaseModel):
    status: Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    request_id: str
    response_url: str
    status_url: str
    cancel_url: str
    queue_position: int | None = None
    logs: list[dict[str, Any]] | None = None
    metrics: dict[str, float] | None = None
    error: str | None = None
    error_type: str | None = None
