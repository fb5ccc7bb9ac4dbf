"""Turn checked input images into what a task needs: sizes, masks, canvases. No torch.

Every dialect goes through here, so Kontext, Fill, Expand and image-to-image behave the
same whichever API a client speaks. Images leave here at their working size, so a 20
megapixel upload is not stored or sent to a worker at full size.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageOps

from fluxserve.errors import InvalidRequest
from fluxserve.images import ops as imageops
from fluxserve.images.sizing import fit_size, parse_aspect_ratio, size_for_aspect
from fluxserve.specs import ModelSpec

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


def prepare_edit(spec: ModelSpec, references: list[Image.Image], width: int, height: int
                 ) -> Prepared:  # fmt: skip
    """Kontext: references scaled down to fit the model's largest working size."""
    scaled = [_fit(image, spec.max_area) for image in references]
    return Prepared(width, height, scaled)


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
