"""Pillow work on input images: masks, outpainting canvases, reference sheets. No torch.

Masks follow FLUX Fill's convention: white repaints, black keeps.
"""

from __future__ import annotations

from PIL import Image

from fluxserve.errors import InvalidRequest

OPAQUE_ENOUGH = 128  # alpha at or above this keeps the pixel; below it is repainted
PAD_GREY = (127, 127, 127)  # the pipeline blanks masked pixels anyway; grey is neutral


def has_transparency(image: Image.Image) -> bool:
    return image.mode == "RGBA" and image.getchannel("A").getextrema()[0] < OPAQUE_ENOUGH


def mask_from_alpha(image: Image.Image) -> Image.Image:
    """A Fill mask from an image's alpha channel: (mostly) transparent pixels repaint."""
    alpha = image.getchannel("A")
    return alpha.point(lambda a: 0 if a >= OPAQUE_ENOUGH else 255, mode="L")


def normalise_mask(mask: Image.Image, image: Image.Image, field_name: str) -> Image.Image:
    """A black-and-white ``L`` mask the size of ``image``; InvalidRequest if sizes differ."""
    if mask.size != image.size:
        raise InvalidRequest(
            field_name,
            f"{field_name} is {mask.size[0]}x{mask.size[1]} but the image is "
            f"{image.size[0]}x{image.size[1]}; they must match",
        )
    return mask.convert("L").point(lambda v: 255 if v >= 128 else 0)


def expand_canvas(
    image: Image.Image, top: int, bottom: int, left: int, right: int
) -> tuple[Image.Image, Image.Image]:
    """The image on a larger canvas, and the mask that repaints only the added border."""
    width, height = image.size
    size = (width + left + right, height + top + bottom)
    canvas = Image.new("RGB", size, PAD_GREY)
    canvas.paste(image.convert("RGB"), (left, top))
    mask = Image.new("L", size, 255)
    mask.paste(0, (left, top, left + width, top + height))
    return canvas, mask


def reference_sheet(images: list[Image.Image]) -> Image.Image:
    """Several reference images side by side, each scaled to the first one's height.

    FLUX.1 Kontext [dev] takes one reference image; placing several on one sheet is how
    multi-reference editing is done with it (ComfyUI's image-stitch workflow does the same).
    """
    if len(images) == 1:
        return images[0].convert("RGB")
    height = images[0].height
    scaled = [
        img.convert("RGB").resize((max(1, round(img.width * height / img.height)), height))
        for img in images
    ]
    sheet = Image.new("RGB", (sum(img.width for img in scaled), height))
    x = 0
    for img in scaled:
        sheet.paste(img, (x, 0))
        x += img.width
    return sheet
