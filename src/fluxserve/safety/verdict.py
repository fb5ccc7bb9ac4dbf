"""The verdict every check returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Verdict:
    """One check's answer: may this prompt or image pass?

    ``score`` is the checker's probability that the content is unsafe (1.0 for a matched
    term); ``category`` names what was found (``nsfw``, ``blocked_term``, or ``ok``).
    """

    allowed: bool
    category: str
    score: float
    checker: str
    point: str = ""  # where it ran: prompt, input:N, output:N
    tolerance: int | None = None

    def at(self, point: str) -> Verdict:
        return dataclasses.replace(self, point=point)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "score": round(self.score, 4)}


def allowed(checker: str) -> Verdict:
    """The verdict of a check that had nothing to say."""
    return Verdict(allowed=True, category="ok", score=0.0, checker=checker)
