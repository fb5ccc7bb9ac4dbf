"""Output sizes: aspect ratios, megapixel targets and the model's size grid. No torch.

FLUX works on a 16-pixel grid (8x VAE, then 2x2 patches), so every size made here is a
multiple of 16.
"""

from __future__ import annotations

import math

from fluxserve.errors import InvalidRequest

GRID = 16
MIN_RATIO, MAX_RATIO = 9 / 21, 21 / 9  # BFL: "between 21:9 and 9:21"


def parse_aspect_ratio(text: str, field_name: str) -> float:
    """``"W:H"`` as width / height; InvalidRequest unless it lies between 21:9 and 9:21."""
    width, sep, height = text.partition(":")
    try:
        ratio = int(width) / int(height) if sep else None
    except (ValueError, ZeroDivisionError, OverflowError):  # "1000...0:1" overflows a float
        ratio = None
    if ratio is None or int(width) <= 0:
        raise InvalidRequest(field_name, f'{field_name} must look like "16:9", got {text!r}', text)
    if not MIN_RATIO - 1e-9 <= ratio <= MAX_RATIO + 1e-9:
        raise InvalidRequest(
            field_name, f"{field_name} must lie between 21:9 and 9:21, got {text}", text
        )
    return ratio


def size_for_aspect(ratio: float, area: int) -> tuple[int, int]:
    """The grid size nearest ``area`` pixels with width / height close to ``ratio``."""
    width = math.sqrt(area * ratio)
    height = width / ratio
    return _snap(width), _snap(height)


def fit_size(width: int, height: int, max_area: int) -> tuple[int, int]:
    """``width`` x ``height`` on the grid, scaled down (keeping its shape) to fit max_area."""
    scale = min(1.0, math.sqrt(max_area / (width * height)))
    return _snap(width * scale, down=True), _snap(height * scale, down=True)


def _snap(value: float, down: bool = False) -> int:
    steps = math.floor(value / GRID) if down else round(value / GRID)
    return max(GRID, steps * GRID)
