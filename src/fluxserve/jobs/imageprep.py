"""Turn checked input images into what a task needs: sizes, masks, canvases. No torch.

Every dialect goes through here, so Kontext, Fill, Expand and image-to-image behave the
same whichever API a client speaks. Images leave here at their working size, so a 20
megapixel upload is not stored or sent to a worker at full size.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageOps

from fluxserve.domain import GenerationRequest, Task
from fluxserve.errors import InvalidRequest
from fluxserve.images import ops as imageops
from fluxserve.images.sizing import GRID, fit_size, parse_aspect_ratio, size_for_aspect
from fluxserve.specs import ModelKind, ModelSpec

RESAMPLE = Image.Resampling.LANCZOS
# Image-to-image strength when a client gives none: fal's default for FLUX.1 [dev]. The
# start image sets the layout and colours; the prompt decides the rest.
DEFAULT_STRENGTH = 0.95


@dataclass
class Prepared:
    """A task's working size and the images (and mask) to store with its job."""

    width: int
    height: int
    images: list[Image.Image]
    mask: Image.Image | None = None

    def parts(self) -> tuple[list[Image.Image], Image.Image | None]:
        """``(images, mask)``, as JobService.submit takes them."""
        return self.images, self.mask


def edit_size(spec: ModelSpec, aspect_ratio: str | None, references: list[Image.Image],
              field_name: str = "aspect_ratio") -> tuple[int, int]:  # fmt: skip
    """Kontext's output: about ``spec.base_area`` pixels at ``aspect_ratio``, else at the
    first reference's shape, else square."""
    if aspect_ratio is not None:
        ratio = parse_aspect_ratio(aspect_ratio, field_name)
    elif references:
        width, height = references[0].size
        ratio = min(max(width / height, 9 / 21), 21 / 9)
    else:
        ratio = 1.0
    return size_for_aspect(ratio, spec.base_area)


# Ultra: FLUX.2 makes about 4 MP natively; FLUX.1 degrades past about 2 (--ultra-megapixels).
# A "megapixel" here is the model's native area (1024x1024 for the real models, 256x256 for
# the tiny ones), so the tiny models keep the same proportions at test sizes.
ULTRA_FLUX2_MEGAPIXELS = 4.0


def ultra_size(spec: ModelSpec, aspect_ratio: str, flux1_megapixels: float,
               field_name: str = "aspect_ratio") -> tuple[int, int, str]:  # fmt: skip
    """Ultra's output at ``aspect_ratio``: about 4 MP on a FLUX.2 model, else
    ``flux1_megapixels``; with the note that says which size was made and why."""
    ratio = parse_aspect_ratio(aspect_ratio, field_name)
    megapixels = ULTRA_FLUX2_MEGAPIXELS if spec.is_flux2 else flux1_megapixels
    width, height = size_for_aspect(ratio, int(megapixels * spec.base_area))
    if spec.is_flux2 and width * height > spec.max_area:  # rounding up past 4 MP
        width, height = fit_size(width, height, spec.max_area)
    made = f"{width}x{height} ({width * height / spec.base_area:.1f} MP)"
    if spec.is_flux2:
        return width, height, f"Ultra: made {made} natively on {spec.name} (FLUX.2)"
    why = (
        f"Ultra: made {made} on {spec.name}, a FLUX.1 model, not 4 MP: FLUX.1 degrades "
        f"past about 2 MP (--ultra-megapixels {flux1_megapixels:g}); a FLUX.2 model makes 4 MP"
    )
    return width, height, why


def raw_notes(spec: ModelSpec, raw: bool) -> tuple[str, ...]:
    """What Ultra's ``raw`` got: Krea (nothing to say), or the Ultra model with a note."""
    if not raw or spec.kind is ModelKind.KREA:
        return ()
    return (
        f"raw: no FLUX.1 Krea [dev] model is loaded (--model flux-krea-dev), so {spec.name} "
        "made the image as without raw",
    )


@dataclass
class ImagePrompt:
    """An image prompt as the serving model takes it: FLUX.1 redraws it (image-to-image at
    ``strength``), FLUX.2 reads it as a reference (edit)."""

    prepared: Prepared
    task: Task
    strength: float | None
    notes: tuple[str, ...] = ()


def prepare_image_prompt(spec: ModelSpec, image: Image.Image, width: int, height: int,
                         strength: float, steps: int, field_name: str = "image_prompt",
                         strength_field: str = "strength") -> ImagePrompt:  # fmt: skip
    """``image`` as the start of a ``width`` x ``height`` image on ``spec``."""
    if spec.is_flux2:
        prepared = prepare_edit(spec, [image], width, height, [field_name])
        note = (
            f"{strength_field} is not used on {spec.name}: FLUX.2 reads {field_name} as a "
            "reference image"
        )
        return ImagePrompt(prepared, Task.EDIT, None, (note,))
    check_strength(strength, steps, strength_field)
    return ImagePrompt(prepare_image_to_image(image, width, height), Task.IMAGE_TO_IMAGE, strength)


def apply_image_prompt(
    request: GenerationRequest, spec: ModelSpec, open_image: Callable[[], Image.Image],
    strength: float, field_name: str = "image_prompt", strength_field: str = "strength",
) -> tuple[GenerationRequest, Prepared]:  # fmt: skip
    """``request`` started from the image ``open_image`` fetches and decodes (called only
    once the strength is known to leave a step to run): every dialect's image prompt."""
    if not spec.is_flux2:
        check_strength(strength, request.steps, strength_field)
    start = prepare_image_prompt(spec, open_image(), request.width, request.height, strength,
                                 request.steps, field_name, strength_field)  # fmt: skip
    request = dataclasses.replace(
        request, task=start.task, strength=start.strength, notes=request.notes + start.notes
    )
    return request, start.prepared


def prepare_edit(spec: ModelSpec, references: list[Image.Image], width: int, height: int,
                 names: list[str] | None = None) -> Prepared:  # fmt: skip
    """An edit's references: scaled down to fit Kontext's largest working size, or checked
    and scaled as FLUX.2 reads them (``names``: their fields, for errors)."""
    if spec.is_flux2:
        names = names or reference_names("input_image", len(references))
        return prepare_references(spec, references, names, width, height)
    scaled = [_fit(image, spec.max_area) for image in references]
    return Prepared(width, height, scaled)


def edit_task(spec: ModelSpec, prepared: Prepared) -> Task:
    """A FLUX.2 "edit" without references is plain text-to-image (and may share a batch);
    Kontext draws from text through its own pipeline."""
    return Task.EDIT if prepared.images or not spec.is_flux2 else Task.TEXT_TO_IMAGE


def reference_names(first: str, count: int) -> list[str]:
    """BFL's field names: ``input_image``, ``input_image_2``, ..."""
    return [first, *(f"{first}_{i}" for i in range(2, count + 1))][:count]


def prepare_fill(spec: ModelSpec, image: Image.Image, mask: Image.Image | None,
                 image_field: str = "image", mask_field: str = "mask") -> Prepared:  # fmt: skip
    """Inpainting: the image at its own size (on the grid, within the model's largest),
    and a black-and-white mask from ``mask`` or else from the image's transparency."""
    if mask is not None:
        mask = imageops.normalise_mask(mask, image, mask_field)
    elif imageops.has_transparency(image):
        mask = imageops.mask_from_alpha(image)
    else:
        raise InvalidRequest(
            mask_field,
            f"{mask_field} is required unless {image_field} has transparent pixels to fill",
        )
    width, height = fit_size(*image.size, spec.max_area)
    image = image.convert("RGB").resize((width, height), RESAMPLE)
    mask = mask.resize((width, height), Image.Resampling.NEAREST)
    return Prepared(width, height, [image], mask)


def prepare_expand(spec: ModelSpec, image: Image.Image, top: int, bottom: int, left: int,
                   right: int) -> Prepared:  # fmt: skip
    """Outpainting: the image on a canvas grown by the margins; only the border repaints."""
    if not any((top, bottom, left, right)):
        raise InvalidRequest("top", "give at least one of top, bottom, left, right above 0")
    canvas, mask = imageops.expand_canvas(image, top, bottom, left, right)
    width, height = fit_size(*canvas.size, spec.max_area)
    if (width, height) != canvas.size:
        canvas = canvas.resize((width, height), RESAMPLE)
        mask = mask.resize((width, height), Image.Resampling.NEAREST)
    return Prepared(width, height, [canvas], mask)


def prepare_image_to_image(image: Image.Image, width: int, height: int) -> Prepared:
    """Image-to-image: the start image cropped to the output's shape and scaled to it."""
    fitted = ImageOps.fit(image.convert("RGB"), (width, height), RESAMPLE)
    return Prepared(width, height, [fitted])


def input_size(spec: ModelSpec, image: Image.Image) -> tuple[int, int]:
    """An output the shape of ``image`` on the grid, within the model's largest size."""
    return fit_size(*image.size, spec.max_area)


def check_strength(strength: float, steps: int, field_name: str = "strength") -> None:
    """Image-to-image runs ``int(steps * strength)`` steps: at least one is needed."""
    if int(steps * strength) < 1:
        raise InvalidRequest(
            field_name,
            f"{field_name} {strength} with {steps} steps leaves no step to run; raise either",
            strength,
        )


def _fit(image: Image.Image, max_area: int) -> Image.Image:
    width, height = image.size
    if width * height <= max_area:
        return image
    return image.resize(fit_size(width, height, max_area), RESAMPLE)


# -- FLUX.2 ----------------------------------------------------------------------------------

# FLUX.2's pipelines scale each reference to at most 1 MP and refuse one under 64 pixels a
# side or longer than 8:1; they are stored at that size, and refused here with the field.
REFERENCE_AREA = 1024 * 1024
MIN_SIDE = 64
MAX_REFERENCE_RATIO = 8


def flux2_size(spec: ModelSpec, width: int | None, height: int | None,
               references: list[Image.Image], fields: tuple[str, str] = ("width", "height"),
               ) -> tuple[int, int]:  # fmt: skip
    """A FLUX.2 output size: ``width`` x ``height`` when given (at least 64, on the 16-pixel
    grid, at most the model's area); absent or 0, the first reference's shape on the grid
    (scaled down to fit), else the model's default square."""
    if not width and not height:
        if references:
            return input_size(spec, references[0])
        return size_for_aspect(1.0, spec.base_area)
    for name, value in zip(fields, (width, height), strict=True):
        if not value:
            raise InvalidRequest(name, f"give both {fields[0]} and {fields[1]}, or neither")
        if value < MIN_SIDE or value % GRID:
            raise InvalidRequest(
                name, f"{name} must be at least {MIN_SIDE} and a multiple of {GRID}, got {value}",
                value,
            )  # fmt: skip
    if width * height > spec.max_area:  # type: ignore[operator]  # both checked above
        raise InvalidRequest(
            fields[0],
            f"{width}x{height} is {width * height / 1e6:.1f} MP; {spec.name} makes at most "
            f"{spec.max_area / 1e6:.1f} MP",
            width,
        )
    return width, height


def check_reference_count(spec: ModelSpec, names: list[str]) -> None:
    """InvalidRequest, naming the first reference too many, when ``spec`` takes fewer
    than ``names`` (call it before fetching or decoding any)."""
    if len(names) > spec.max_references:
        raise InvalidRequest(
            names[spec.max_references],
            f"{spec.name} takes at most {spec.max_references} reference images, got {len(names)}",
            len(names),
        )


def prepare_references(spec: ModelSpec, references: list[Image.Image], names: list[str],
                       width: int, height: int) -> Prepared:  # fmt: skip
    """FLUX.2 edits: each reference checked and scaled to at most 1 MP, as the pipeline
    would, so nothing larger is stored or sent to a worker."""
    check_reference_count(spec, names)
    scaled = []
    for image, name in zip(references, names, strict=True):
        w, h = image.size
        if min(w, h) < MIN_SIDE:
            raise InvalidRequest(name, f"{name} is {w}x{h}; each side must be at least {MIN_SIDE}")
        if max(w, h) / min(w, h) > MAX_REFERENCE_RATIO:
            raise InvalidRequest(
                name, f"{name} is {w}x{h}; it may be at most {MAX_REFERENCE_RATIO}:1 long"
            )
        scaled.append(_fit(image.convert("RGB"), REFERENCE_AREA))
    return Prepared(width, height, scaled)
