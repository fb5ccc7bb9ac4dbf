"""An invisible watermark on outputs: invisible-watermark's DWT-DCT, as BFL's reference code.

The mark is 48 bits (the bytes ``FLUXSV``); ``read_watermark`` decodes it back. It survives
saving as PNG, and as JPEG because the worker saves watermarked JPEGs with full chroma
(4:4:4); lossy WebP's chroma subsampling often erases it. A provenance hint only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from fluxserve.errors import ConfigurationError

MARK = b"FLUXSV"
METHOD = "dwtDct"


def _codec():
    try:
        from imwatermark import WatermarkDecoder, WatermarkEncoder
    except ImportError:
        raise ConfigurationError(
            "--watermark needs the invisible-watermark package: pip install 'fluxserve[watermark]'"
        ) from None
    return WatermarkEncoder, WatermarkDecoder


def watermarker() -> Callable[[Image.Image], Image.Image]:
    """A function that returns its image with the mark embedded."""
    encoder_class, _ = _codec()
    encoder = encoder_class()
    encoder.set_watermark("bytes", MARK)

    def mark(image: Image.Image) -> Image.Image:
        bgr = np.asarray(image.convert("RGB"))[:, :, ::-1]  # the codec works in BGR
        marked = encoder.encode(np.ascontiguousarray(bgr), METHOD)
        return Image.fromarray(np.ascontiguousarray(marked[:, :, ::-1]))

    return mark


def read_watermark(image: Image.Image) -> bytes:
    """The 48 bits found in ``image`` (``MARK`` if it carries fluxserve's watermark)."""
    _, decoder_class = _codec()
    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
    return decoder_class("bytes", len(MARK) * 8).decode(bgr, METHOD)
