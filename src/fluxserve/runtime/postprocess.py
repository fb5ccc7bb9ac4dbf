"""Encode images with their generation metadata. Pillow only; no torch."""

from __future__ import annotations

import io
import json

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from fluxserve import __version__
from fluxserve.domain import GenerationRequest, OutputFormat

JPEG_QUALITY = 95
WEBP_QUALITY = 95
EXIF_IMAGE_DESCRIPTION = 0x010E
EXIF_SOFTWARE = 0x0131
# A JPEG's EXIF segment holds at most 64 KiB; leave room for the other tags.
EXIF_TEXT_LIMIT = 60_000


def _exif_text(metadata: dict[str, object]) -> str:
    """The metadata as JSON that fits in EXIF, shortening a very long prompt to fit."""
    text = json.dumps(metadata)
    prompt = metadata.get("prompt")
    while len(text) > EXIF_TEXT_LIMIT and isinstance(prompt, str) and prompt:
        prompt = prompt[: len(prompt) // 2]
        text = json.dumps({**metadata, "prompt": prompt, "prompt_truncated": True})
    return text


def generation_metadata(request: GenerationRequest, include_prompt: bool) -> dict[str, object]:
    meta: dict[str, object] = {
        "ai_generated": "AI generated",
        "model": request.model,
        "seed": request.seed,
        "steps": request.steps,
        "guidance": request.guidance,
        "width": request.width,
        "height": request.height,
    }
    if request.loras:  # "source@scale", in the order they were applied
        meta["loras"] = ", ".join(
            f"{source.removeprefix('hf:').removeprefix('file:')}@{scale:g}"
            for source, scale in request.loras
        )
    if include_prompt:
        meta["prompt"] = request.prompt
    return meta


def encode_image(
    image: Image.Image, fmt: OutputFormat, metadata: dict[str, object], full_chroma: bool = False
) -> bytes:
    """The image file in ``fmt``, carrying ``metadata`` (PNG text chunks, or EXIF).

    ``full_chroma`` keeps JPEG's colour at full resolution (4:4:4, larger files): the
    invisible watermark lives in a colour channel that 4:2:0 subsampling would erase.
    """
    buffer = io.BytesIO()
    software = f"fluxserve {__version__}"
    if fmt is OutputFormat.PNG:
        info = PngInfo()
        info.add_text("Software", software)
        info.add_text("Comment", "AI generated")
        info.add_text("fluxserve", json.dumps(metadata))
        image.save(buffer, format="PNG", pnginfo=info)
    else:
        exif = Image.Exif()
        exif[EXIF_SOFTWARE] = software
        exif[EXIF_IMAGE_DESCRIPTION] = _exif_text(metadata)
        rgb = image.convert("RGB")
        if fmt is OutputFormat.JPEG:
            subsampling = 0 if full_chroma else -1  # -1: Pillow's default (4:2:0)
            rgb.save(
                buffer, format="JPEG", quality=JPEG_QUALITY, exif=exif, subsampling=subsampling
            )
        else:
            rgb.save(buffer, format="WEBP", quality=WEBP_QUALITY, exif=exif)
    return buffer.getvalue()


def read_metadata(data: bytes) -> dict[str, object]:
    """The fluxserve metadata of an encoded image (inverse of encode_image)."""
    image = Image.open(io.BytesIO(data))
    if image.format == "PNG":
        return json.loads(image.text["fluxserve"])
    return json.loads(image.getexif()[EXIF_IMAGE_DESCRIPTION])
