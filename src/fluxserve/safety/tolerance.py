"""``safety_tolerance`` -> classifier thresholds: one table for BFL's 0-6 and fal's "1"-"6".

A classifier's score is its probability that the content is unsafe; content is blocked when
the score reaches the threshold. 0 is the strictest tolerance, 6 the most permissive. 2 (the
default of both APIs) blocks at 0.85, the threshold BFL's reference code uses with
Falconsai/nsfw_image_detection.
"""

from __future__ import annotations

TOLERANCE_THRESHOLDS: dict[int, float] = {
    0: 0.30,
    1: 0.60,
    2: 0.85,
    3: 0.90,
    4: 0.95,
    5: 0.98,
    6: 0.995,
}
MAX_TOLERANCE = max(TOLERANCE_THRESHOLDS)


def threshold_for(tolerance: int) -> float:
    return TOLERANCE_THRESHOLDS[min(max(tolerance, 0), MAX_TOLERANCE)]


def clamp_tolerance(requested: int, most_allowed: int) -> tuple[int, str | None]:
    """The tolerance to apply, and a note when the request asked for more than allowed."""
    if requested <= most_allowed:
        return requested, None
    note = (
        f"safety_tolerance {requested} was lowered to {most_allowed}, the most permissive "
        "this server allows"
    )
    return most_allowed, note
