"""fal wire models, after fal's published input/output types (api-compat.md §2.5-2.6).

Unknown fields are accepted and ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_serializer,
)
from pydantic_core import PydanticCustomError

from fluxserve.api.validators import LoraList, NotBool, ValidText, multiple_of
from fluxserve.config import MAX_IMAGES_CAP
from fluxserve.domain import MAX_SEED
from fluxserve.jobs.imageprep import DEFAULT_STRENGTH

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


Seed = Annotated[int, Field(ge=0, le=MAX_SEED), NotBool]
Steps = Annotated[int, Field(ge=1, le=50), NotBool]
Guidance = Annotated[float, Field(ge=1, le=20), NotBool]
SafetyTolerance = Literal["1", "2", "3", "4", "5", "6"]
Acceleration = Literal["none", "regular", "high"]
ImageUrl = Annotated[
    str, Field(min_length=1, description="An http(s) URL, a data: URI or base64 (JPEG, PNG, WebP).")
]


class _Base(BaseModel):
    """What every fal input here takes, with or without input images."""

    model_config = ConfigDict(extra="allow")

    prompt: Annotated[str, ValidText] = Field(description="What to draw.")
    seed: Seed | None = Field(None, description="0..2^64-1; random when absent.")
    sync_mode: bool = Field(False, description="Return images as data: URIs and keep none.")
    num_images: Annotated[int, Field(ge=1, le=MAX_IMAGES_CAP), NotBool] = Field(
        1, description="Images to make, as one batch; at most --max-images-per-request (10)."
    )
    output_format: Literal["jpeg", "png"] = "jpeg"
    enhance_prompt: bool = Field(
        False, description="Rewrite the prompt with the server's prompt upsampler first."
    )


class _Input(_Base):
    image_size: Annotated[ImageSize, BeforeValidator(_preset_to_size)] = Field(
        default_factory=lambda: ImageSize(width=1024, height=768),
        description="A preset (square_hd, square, portrait_4_3, portrait_16_9, landscape_4_3, "
        "landscape_16_9) or {width, height}; default landscape_4_3.",
    )
    enable_safety_checker: bool = Field(
        True,
        description="false: check at safety_tolerance 6, clamped to the most this server allows.",
    )
    safety_tolerance: SafetyTolerance = Field("2", description="1 (strictest) to 6, as a string.")

    def size(self) -> tuple[int, int]:
        return self.image_size.width, self.image_size.height


class FluxInput(_Input):
    """``fal-ai/flux/dev`` and ``fal-ai/flux/schnell`` (and their ``flux-1`` twins)."""

    num_inference_steps: Steps | None = Field(
        None, description="Default 28 on dev, 4 on schnell (at most 12)."
    )
    guidance_scale: Guidance = Field(3.5, description="Guidance strength; schnell does not use it.")
    acceleration: Acceleration = "none"


class FluxProV11Input(_Input):
    """``fal-ai/flux-pro/v1.1``: no steps or guidance; the serving model's defaults apply."""


# -- image inputs ---------------------------------------------------------------------------

KontextAspectRatio = Literal["21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21"]
ResolutionMode = Literal[
    "auto", "match_input", "1:1", "16:9", "21:9", "3:2", "2:3", "4:5", "5:4", "3:4", "4:3",
    "9:16", "9:21",
]  # fmt: skip


class KontextDevInput(_Base):
    """``fal-ai/flux-kontext/dev``: edit one image as the prompt says (open-weights Kontext)."""

    image_url: ImageUrl = Field(description="The image to edit.")
    num_inference_steps: Steps | None = Field(
        None, description="1-50; default: the model's (28 on flux-kontext-dev)."
    )
    guidance_scale: Guidance = Field(2.5, description="Guidance strength; 1-20.")
    resolution_mode: ResolutionMode = Field(
        "match_input",
        description="The output's shape: an aspect ratio, or match_input (the input image's). "
        "auto is the same as match_input on this server.",
    )
    acceleration: Acceleration = "none"
    enable_safety_checker: bool = Field(
        True,
        description="false: check at safety_tolerance 6, clamped to the most this server allows.",
    )
    output_format: Literal["jpeg", "png"] = "png"

    def aspect_ratio(self) -> str | None:
        """The ratio asked for; None to follow the input image."""
        return None if self.resolution_mode in ("auto", "match_input") else self.resolution_mode


class _KontextProInput(_Base):
    """The fields of ``fal-ai/flux-pro/kontext*`` other than the images."""

    aspect_ratio: KontextAspectRatio | None = Field(
        None, description="The output's shape; default: the (first) input image's."
    )
    guidance_scale: Guidance = Field(3.5, description="Guidance strength; 1-20.")
    safety_tolerance: SafetyTolerance = Field("2", description="1 (strictest) to 6, as a string.")

    def references(self) -> list[tuple[str, str]]:
        """(field name, value) of each input image, in order."""
        return []


class KontextProInput(_KontextProInput):
    """``fal-ai/flux-pro/kontext`` and ``.../kontext/max``: edit one image."""

    image_url: ImageUrl = Field(description="The image to edit.")

    def references(self) -> list[tuple[str, str]]:
        return [("image_url", self.image_url)]


class KontextProMultiInput(_KontextProInput):
    """``fal-ai/flux-pro/kontext/multi`` and ``.../kontext/max/multi``: up to four images."""

    image_urls: list[ImageUrl] = Field(
        min_length=1, max_length=4, description="1-4 reference images."
    )

    def references(self) -> list[tuple[str, str]]:
        return [(f"image_urls.{n}", value) for n, value in enumerate(self.image_urls)]


class KontextProTextInput(_KontextProInput):
    """``fal-ai/flux-pro/kontext/text-to-image`` and ``.../kontext/max/text-to-image``."""

    aspect_ratio: KontextAspectRatio = Field("1:1", description="The output's shape.")


class FluxImageToImageInput(_Base):
    """``fal-ai/flux/dev/image-to-image``: redraw a start image; the output has its shape."""

    image_url: ImageUrl = Field(description="The start image.")
    strength: Annotated[float, Field(gt=0, le=1), NotBool] = Field(
        DEFAULT_STRENGTH,
        description="How far the start image is noised before denoising (1: only its colours "
        "survive).",
    )
    num_inference_steps: Steps | None = Field(
        None, description="1-50; default: the model's (28 on flux-dev)."
    )
    guidance_scale: Guidance = Field(3.5, description="Guidance strength; 1-20.")
    acceleration: Acceleration = "none"
    enable_safety_checker: bool = Field(
        True,
        description="false: check at safety_tolerance 6, clamped to the most this server allows.",
    )


class FluxProFillInput(_Base):
    """``fal-ai/flux-pro/v1/fill``: repaint where the mask is white."""

    image_url: ImageUrl = Field(
        description="The image; its transparent pixels are repainted when no mask_url is given."
    )
    mask_url: ImageUrl | None = Field(
        None, description="Same size as image_url: white repaints, black keeps."
    )
    safety_tolerance: SafetyTolerance = Field("2", description="1 (strictest) to 6, as a string.")
    num_inference_steps: Steps | None = Field(
        None, description="fluxserve extension: 1-50; default: the model's (50)."
    )
    guidance_scale: Annotated[float, Field(ge=1, le=100), NotBool] | None = Field(
        None,
        description="fluxserve extension: 1-100; default: the model's (30 on flux-fill-dev).",
    )


class KreaInput(FluxInput):
    """``fal-ai/flux/krea`` and ``fal-ai/flux-1/krea`` (FLUX.1 Krea [dev])."""

    guidance_scale: Guidance = Field(4.5, description="Guidance strength; 1-20 (Krea: 4.5).")


class KreaImageToImageInput(FluxImageToImageInput):
    """``fal-ai/flux/krea/image-to-image``."""

    guidance_scale: Guidance = Field(4.5, description="Guidance strength; 1-20 (Krea: 4.5).")


class FluxProUltraInput(_Base):
    """``fal-ai/flux-pro/v1.1-ultra``: about 4 MP at a ratio; ``raw`` on FLUX.1 Krea [dev]."""

    aspect_ratio: KontextAspectRatio = Field("16:9", description="The output's shape.")
    raw: bool = Field(False, description="Less processed, more natural-looking images.")
    image_url: ImageUrl | None = Field(None, description="An image to remix.")
    image_prompt_strength: Annotated[float, Field(ge=0, le=1), NotBool] = Field(
        0.1, description="0-1: how much of image_url survives."
    )
    safety_tolerance: SafetyTolerance = Field("2", description="1 (strictest) to 6, as a string.")
    enable_safety_checker: bool = Field(
        True,
        description="false: check at safety_tolerance 6, clamped to the most this server allows.",
    )


# -- FLUX.2 ----------------------------------------------------------------------------------

FLUX2_MAX_IMAGE_URLS = 10  # a bound on the list; the serving model's own limit is checked too


Flux2Side = Annotated[
    int,
    Field(ge=64, le=4096, description="Pixels; at least 64, a multiple of 16; at most 4 MP."),
    AfterValidator(multiple_of(SIZE_STEP)),
    NotBool,
]


class Flux2ImageSize(BaseModel):
    width: Flux2Side
    height: Flux2Side


def _preset_or_auto(value: Any) -> Any:
    """``auto`` (the first input image's size, else the model's default) becomes None."""
    return None if value == "auto" else _preset_to_size(value)


class _Flux2Input(_Base):
    """What every fal FLUX.2 endpoint takes."""

    image_size: Annotated[Flux2ImageSize | None, BeforeValidator(_preset_or_auto)] = Field(
        default_factory=lambda: Flux2ImageSize(width=1024, height=768),
        description="A preset (square_hd, square, portrait_4_3, portrait_16_9, landscape_4_3, "
        "landscape_16_9), {width, height}, or auto (the first input image's size, else "
        "1024x1024); default landscape_4_3.",
    )
    enable_safety_checker: bool = Field(
        True,
        description="false: check at safety_tolerance 5, clamped to the most this server allows.",
    )
    safety_tolerance: Literal["1", "2", "3", "4", "5"] = Field(
        "2", description="1 (strictest) to 5, as a string."
    )
    output_format: Literal["jpeg", "png", "webp"] = "jpeg"

    def size(self) -> tuple[int | None, int | None]:
        """The size asked for; (None, None) for auto."""
        if self.image_size is None:
            return None, None
        return self.image_size.width, self.image_size.height

    def references(self) -> list[tuple[str, str]]:
        """(field name, value) of each reference image, in order."""
        urls: list[str] = getattr(self, "image_urls", [])
        return [(f"image_urls.{n}", value) for n, value in enumerate(urls)]


class Flux2ProInput(_Flux2Input):
    """``fal-ai/flux-2-pro`` and ``fal-ai/flux-2-max``: no steps or guidance."""


class Flux2Input(_Flux2Input):
    """``fal-ai/flux-2`` ([dev]), ``fal-ai/flux-2-flex`` and the [klein] ids."""

    num_inference_steps: Steps | None = Field(
        None, description="1-50; default: the model's (50 on [dev], 4 on distilled [klein])."
    )
    guidance_scale: Guidance | None = Field(
        None, description="1-20; default: the model's (not used by distilled [klein])."
    )
    acceleration: Acceleration = "none"
    enable_prompt_expansion: bool = Field(
        False, description="Rewrite the prompt with the server's prompt upsampler first."
    )


ImageUrls = Annotated[list[ImageUrl], Field(min_length=1, max_length=FLUX2_MAX_IMAGE_URLS)]
EDIT_URLS_DESCRIPTION = "The reference images, in order (at most 4 on [klein], 8 otherwise)."


class Flux2ProEditInput(Flux2ProInput):
    """``fal-ai/flux-2-pro/edit`` and ``fal-ai/flux-2-max/edit``."""

    image_urls: ImageUrls = Field(description=EDIT_URLS_DESCRIPTION)
    image_size: Annotated[Flux2ImageSize | None, BeforeValidator(_preset_or_auto)] = Field(
        None, description="As on the text-to-image id; default auto (the first image's size)."
    )


class Flux2EditInput(Flux2Input):
    """``fal-ai/flux-2/edit``, ``fal-ai/flux-2-flex/edit`` and the [klein] ``/edit`` ids."""

    image_urls: ImageUrls = Field(description=EDIT_URLS_DESCRIPTION)
    image_size: Annotated[Flux2ImageSize | None, BeforeValidator(_preset_or_auto)] = Field(
        None, description="As on the text-to-image id; default auto (the first image's size)."
    )


# -- LoRA ------------------------------------------------------------------------------------

LORAS_DESCRIPTION = (
    "LoRAs to apply, in order: {path, scale}; path is a registered LoRA's name, a Hugging Face "
    "repo id or an http(s) URL of a .safetensors file"
)


class FluxLoraInput(FluxInput):
    """``fal-ai/flux-lora`` (FLUX.1 [dev] with LoRAs)."""

    loras: LoraList = Field(default_factory=list, description=LORAS_DESCRIPTION)


class FluxLoraImageToImageInput(FluxImageToImageInput):
    """``fal-ai/flux-lora/image-to-image``."""

    loras: LoraList = Field(default_factory=list, description=LORAS_DESCRIPTION)


class Flux2LoraInput(Flux2Input):
    """``fal-ai/flux-2/lora`` (FLUX.2 with LoRAs)."""

    loras: LoraList = Field(default_factory=list, description=LORAS_DESCRIPTION)


class Flux2LoraEditInput(Flux2EditInput):
    """``fal-ai/flux-2/lora/edit``."""

    loras: LoraList = Field(default_factory=list, description=LORAS_DESCRIPTION)


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
    gateway_request_id: str | None = None  # with ?fal_webhook= only, as fal answers

    @model_serializer(mode="wrap")
    def _gateway_id_only_when_set(self, handler):
        data = handler(self)
        if data.get("gateway_request_id") is None:
            data.pop("gateway_request_id", None)
        return data


class CancelStatus(BaseModel):
    """What a cancel answers: 202 CANCELLATION_REQUESTED, 400 ALREADY_COMPLETED or 404
    NOT_FOUND (fal's bodies)."""

    status: Literal["CANCELLATION_REQUESTED", "ALREADY_COMPLETED", "NOT_FOUND"]


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
