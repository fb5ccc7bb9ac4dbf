"""The Runner protocol the engine drives; torch-free so the engine can name it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from PIL import Image

from fluxserve.domain import GenerationRequest

OnStep = Callable[[int, int], None]  # (steps done, total steps)
ShouldStop = Callable[[], bool]


class Runner(Protocol):
    name: str

    def load(self) -> None:
        """Load weights onto the device; called once in the worker before any job."""
        ...

    def generate(
        self, request: GenerationRequest, on_step: OnStep, should_stop: ShouldStop
    ) -> list[Image.Image]:
        """Make the request's images; raises GenerationCancelled when should_stop says so."""
        ...
