"""BFL wire models, after BFL's official OpenAPI spec (shared/reference/bfl-openapi.json).

Unknown fields are accepted and ignored: real clients send extras (api-compat.md §0.2).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_serializer,
)
from pydantic.json_schema import SkipJsonSchema

from fluxserve.api.validators import LoraList, NotBool, multiple_of, valid_text
from fluxserve.domain import MAX_SEED
from fluxserve.jobs.imageprep import reference_names
from fluxserve.jobs.webhooks import secret_problem, url_problem

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
# BFL's documented range; a FLUX.1 model may look oversaturated past 5 (the caller's call).
Guidance = Annotated[float, Field(ge=1.5, le=10), NotBool]
OutputFormatName = Literal["jpeg", "png", "webp"]
# "W:H"; the bound keeps a hostile value out of the error that quotes it.
AspectRatio = Annotated[str, Field(max_length=32)]


def _webhook_url(value: str) -> str:
    problem = url_problem(value)
    if problem is not None:
        raise ValueError(f"webhook_url {problem}")
    return value


WebhookUrl = Annotated[str, Field(min_length=1, max_length=2083), AfterValidator(_webhook_url)]


def _webhook_secret(value: str) -> str:
    problem = secret_problem(value)
    if problem is not None:
        raise ValueError(f"webhook_secret {problem}")
    return value


WebhookSecret = Annotated[str, AfterValidator(_webhook_secret)]


def given(inputs: BaseModel, names: list[str]) -> list[tuple[str, str]]:
    """(field name, value) of each of ``names`` the body set, in order."""
    return [(name, getattr(inputs, name)) for name in names if getattr(inputs, name)]


class _CommonInputs(BaseModel):
    """The fields every BFL generation endpoint takes."""

    model_config = ConfigDict(extra="allow")

    seed: Seed | None = Field(None, description="0..2^64-1; random when absent.")
    safety_tolerance: Annotated[int, Field(ge=0, le=6), NotBool] = Field(
        2, description="0 (strictest) to 6."
    )
    output_format: OutputFormatName | None = Field("jpeg", description="jpeg, png or webp.")
    prompt_upsampling: bool = Field(False, description="Rewrite the prompt before generating.")
    webhook_url: WebhookUrl | None = Field(
        None, description="http(s) URL to POST the result to when the task ends."
    )
    webhook_secret: WebhookSecret | None = Field(
        None, description="Sent back in the webhook's X-Webhook-Secret header."
    )
    previews: bool = Field(
        False,
        description="fluxserve extension: while the task runs, get_result's preview holds a "
        "small JPEG of the image so far (every few steps, at most 4 a second).",
    )


class _Inputs(_CommonInputs):
    """Fields every BFL text-to-image endpoint takes."""

    prompt: Prompt = Field("", description="What to draw.")
    image_prompt: str | None = Field(
        None,
        description="Start image (base64, data: URI or URL): served as image-to-image on the "
        "text-to-image model.",
    )
    strength: Annotated[float, Field(gt=0, le=1), NotBool] | None = Field(
        None,
        description="fluxserve extension: how far image_prompt is noised before denoising "
        "(1: only its colours survive); default 0.95.",
    )
    width: Dimension = 1024
    height: Dimension = 768


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


ImageReference = Annotated[str, Field(min_length=1, description="Base64, data: URI or URL.")]
FillSteps = Annotated[int, Field(ge=15, le=50), NotBool]
FillGuidance = Annotated[float, Field(ge=1.5, le=100), NotBool]
Margin = Annotated[int, Field(ge=0, le=2048), NotBool]


class FluxKontextProInputs(_CommonInputs):
    """``/v1/flux-kontext-pro`` and ``/v1/flux-kontext-max``: edit with reference images."""

    prompt: Annotated[str, Field(min_length=1), AfterValidator(valid_text)] = Field(
        description="The edit to make, or the picture to draw without an input image."
    )
    input_image: ImageReference | None = Field(None, description="The image to edit.")
    image: ImageReference | None = Field(
        None, description="The image to edit, by its other documented name (not with input_image)."
    )
    input_image_2: ImageReference | None = Field(None, description="Another reference.")
    input_image_3: ImageReference | None = None
    input_image_4: ImageReference | None = None
    aspect_ratio: AspectRatio | None = Field(
        None, description="W:H between 21:9 and 9:21; default: the input image's, else 1:1."
    )
    steps: Steps | None = Field(None, description="1-50; default: the model's (28).")
    guidance: Guidance | None = Field(None, description="1.5-10; default: the model's (2.5).")
    output_format: OutputFormatName | None = Field("png", description="jpeg, png or webp.")

    @field_validator("image")
    @classmethod
    def _one_name_for_the_image(cls, value: str | None, info: ValidationInfo) -> str | None:
        # input_image is declared first, so it is validated (and in info.data) by now.
        if value is not None and info.data.get("input_image") is not None:
            raise ValueError("send the image as input_image or as image, not both")
        return value

    def references(self) -> list[tuple[str, str]]:
        """(field name, value) of each reference image given, in order."""
        return given(self, ["input_image", "image", *reference_names("input_image", 4)[1:]])


class FluxProFillInputs(_CommonInputs):
    """``/v1/flux-pro-1.0-fill``: repaint where the mask is white."""

    image: ImageReference = Field(
        description="The image; transparent pixels are repainted when no mask is given."
    )
    mask: ImageReference | None = Field(
        None, description="Same size as image: white repaints, black keeps."
    )
    prompt: Prompt = Field("", description="What to paint in the masked area.")
    steps: FillSteps | None = Field(None, description="15-50; default: the model's (50).")
    guidance: FillGuidance | None = Field(
        None, description="1.5-100; default: the model's (30 on FLUX.1 Fill [dev])."
    )


class FluxProExpandInputs(_CommonInputs):
    """``/v1/flux-pro-1.0-expand``: grow the canvas and paint the new border."""

    image: ImageReference = Field(description="The image to extend.")
    top: Margin = Field(0, description="Pixels to add above; 0-2048.")
    bottom: Margin = Field(0, description="Pixels to add below; 0-2048.")
    left: Margin = Field(0, description="Pixels to add on the left; 0-2048.")
    right: Margin = Field(0, description="Pixels to add on the right; 0-2048.")
    prompt: Prompt = Field("", description="What the new border shows.")
    steps: FillSteps | None = Field(None, description="15-50; default: the model's (50).")
    guidance: FillGuidance | None = Field(
        None, description="1.5-100; default: the model's (30 on FLUX.1 Fill [dev])."
    )


class FluxUltraInputs(_CommonInputs):
    """``/v1/flux-pro-1.1-ultra`` (BFL's ``FluxUltraInput``): about 4 MP at a ratio."""

    prompt: Prompt = Field("", description="What to draw.")
    aspect_ratio: AspectRatio = Field("16:9", description="W:H between 21:9 and 9:21.")
    raw: bool = Field(
        False,
        description="More natural, less processed images: made by FLUX.1 Krea [dev] when it "
        "is loaded (else by the Ultra model, with a note).",
    )
    image_prompt: ImageReference | None = Field(
        None, description="An image to remix (base64, data: URI or URL)."
    )
    image_prompt_strength: Annotated[float, Field(ge=0, le=1), NotBool] = Field(
        0.1,
        description="0-1: how much of image_prompt survives (FLUX.1: image-to-image at "
        "1 - strength denoise; FLUX.2 reads the image as a reference).",
    )
    steps: Steps | None = Field(
        None, description="fluxserve extension: 1-50; default: the serving model's."
    )
    guidance: Guidance | None = Field(
        None, description="fluxserve extension: 1.5-10; default: the serving model's."
    )


FinetuneId = Annotated[
    str, Field(min_length=1, max_length=200, description="A LoRA the operator registered.")
]


class FinetuneFluxUltraInputs(FluxUltraInputs):
    """``/v1/flux-pro-1.1-ultra-finetuned`` (``FinetuneFluxUltraInput``): Ultra with the
    registered LoRA ``finetune_id`` at ``finetune_strength``."""

    finetune_id: FinetuneId
    finetune_strength: Annotated[float, Field(ge=0, le=2), NotBool] = Field(
        1.2, description="0-2: the LoRA's scale."
    )


class FinetuneFluxProFillInputs(FluxProFillInputs):
    """``/v1/flux-pro-1.0-fill-finetuned`` (``FinetuneFluxProFillInputs``)."""

    finetune_id: FinetuneId
    finetune_strength: Annotated[float, Field(ge=0, le=2), NotBool] = Field(
        1.1, description="0-2: the LoRA's scale."
    )


class MyFinetunesResponse(BaseModel):
    finetunes: list[str]


class FinetuneDetailResponse(BaseModel):
    finetune_details: dict[str, Any]


class DeleteFinetuneInputs(BaseModel):
    finetune_id: FinetuneId


class DeleteFinetuneResponse(BaseModel):
    status: str
    message: str
    deleted_finetune_id: str
    timestamp: str


# -- FLUX.2 ----------------------------------------------------------------------------------

Flux2Side = Annotated[
    int,
    Field(
        ge=0,
        le=16384,
        description="Pixels; 0 or absent: from the first input image, else 1024. Otherwise at "
        "least 64 and a multiple of 16, the image at most 4 MP.",
    ),
    NotBool,
]
Flux2Tolerance = Annotated[int, Field(ge=0, le=5), NotBool]
FLUX2_MAX_REFERENCES = 8
KLEIN_MAX_REFERENCES = 4


class _Flux2Common(_CommonInputs):
    """BFL's ``Flux2Inputs`` and its kin: text-to-image, or an edit of reference images."""

    prompt: Annotated[str, Field(min_length=1), AfterValidator(valid_text)] = Field(
        description="What to draw, or the edit to make to the input images."
    )
    width: Flux2Side | None = None
    height: Flux2Side | None = None
    safety_tolerance: Flux2Tolerance = Field(2, description="0 (strictest) to 5.")
    input_image: ImageReference | None = Field(
        None, description="A reference image: base64, data: URI or URL."
    )
    input_image_2: ImageReference | None = None
    input_image_3: ImageReference | None = None
    input_image_4: ImageReference | None = None

    max_references: ClassVar[int] = KLEIN_MAX_REFERENCES

    def references(self) -> list[tuple[str, str]]:
        """(field name, value) of each reference image given, in order."""
        return given(self, reference_names("input_image", self.max_references))


class Flux2Inputs(_Flux2Common):
    """``/v1/flux-2-pro``, ``-max``, ``-pro-preview``: up to 8 reference images."""

    input_image_5: ImageReference | None = None
    input_image_6: ImageReference | None = None
    input_image_7: ImageReference | None = None
    input_image_8: ImageReference | None = None

    max_references: ClassVar[int] = FLUX2_MAX_REFERENCES


class Flux2FlexInputs(Flux2Inputs):
    """``/v1/flux-2-flex``: steps and guidance, and prompt upsampling on by default."""

    steps: Steps | None = Field(
        None, description="1-50; default 50 (on a step-distilled model, its own 4)."
    )
    guidance: Annotated[float, Field(ge=1.5, le=10), NotBool] | None = Field(
        None, description="1.5-10; default 5.0 (not used by step-distilled models)."
    )
    prompt_upsampling: bool = Field(True, description="Rewrite the prompt before generating.")


def _not_on_klein(value: str | None) -> None:
    if value is not None:
        raise ValueError(
            f"[klein] takes at most {KLEIN_MAX_REFERENCES} reference images "
            f"(input_image to input_image_{KLEIN_MAX_REFERENCES})"
        )


# Refused rather than ignored as an unknown field: a dropped reference is a wrong picture.
BeyondKlein = SkipJsonSchema[Annotated[str | None, AfterValidator(_not_on_klein)]]


class Flux2KleinInputs(_Flux2Common):
    """``/v1/flux-2-klein-4b``, ``-9b``, ``-9b-preview``: up to 4 reference images."""

    input_image_5: BeyondKlein = None
    input_image_6: BeyondKlein = None
    input_image_7: BeyondKlein = None
    input_image_8: BeyondKlein = None


class ByNameInputs(FluxDevInputs):
    """``POST /v1/{model}``: FLUX.1 [dev]'s fields, plus reference images for a FLUX.2 model."""

    input_image: ImageReference | None = Field(
        None, description="FLUX.2 models only: a reference image (base64, data: URI or URL)."
    )
    input_image_2: ImageReference | None = None
    input_image_3: ImageReference | None = None
    input_image_4: ImageReference | None = None
    input_image_5: ImageReference | None = None
    input_image_6: ImageReference | None = None
    input_image_7: ImageReference | None = None
    input_image_8: ImageReference | None = None
    loras: LoraList = Field(
        default_factory=list,
        description="fluxserve extension, as fal's: [{path, scale}] LoRAs to apply.",
    )

    def references(self) -> list[tuple[str, str]]:
        """(field name, value) of each reference image given, in order."""
        return given(self, reference_names("input_image", FLUX2_MAX_REFERENCES))


class AsyncResponse(BaseModel):
    """AsyncResponse, or with a webhook BFL's AsyncWebhookResponse (``status`` and
    ``webhook_url`` too; ``polling_url`` is kept, as clients read it)."""

    id: str
    polling_url: str
    cost: float | None = None
    input_mp: float | None = None
    output_mp: float | None = None
    status: str | None = None  # webhook mode only: "Pending"
    webhook_url: str | None = None  # webhook mode only

    @model_serializer(mode="wrap")
    def _webhook_fields_only_when_set(self, handler):
        data = handler(self)
        for name in ("status", "webhook_url"):
            if data.get(name) is None:
                data.pop(name, None)
        return data


class CreditsResponse(BaseModel):
    """BFL's ``CreditsResponse``; null where the key has no budget (a self-hosted server
    need not count credits)."""

    credits: float | None


ResultStatus = Literal[
    "Task not found", "Pending", "Request Moderated", "Content Moderated", "Ready", "Error"
]


class Preview(BaseModel):
    """A running task's latest live preview (the submit asked for ``previews``)."""

    image: str = Field(
        description="data:image/jpeg;base64,...: the image so far, at an eighth of its "
        "width and height."
    )
    step: int = Field(description="The denoising step it shows.")
    steps: int = Field(description="The task's denoising steps.")


class ResultResponse(BaseModel):
    id: str
    status: ResultStatus
    result: dict[str, Any] | None = None
    progress: float | None = None
    details: dict[str, Any] | None = None
    preview: Preview | None = Field(
        None,
        description="While the task runs, when the submit asked for previews (a fluxserve "
        "extension): its latest preview; null before the first and once the task ended.",
    )
