"""The Runner protocol the engine drives; torch-free so the engine can name it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from PIL import Image

from fluxserve.domain import GenerationRequest

# (steps done, total steps); when a request of the loop asked for previews, also the
# keyword ``previews``, one JPEG (or None) per request of the loop, in order, at the steps
# a preview is due (runtime/previews.py): a callback that takes two arguments serves jobs
# that do not ask.
OnStep = Callable[..., None]
ShouldStop = Callable[[], bool]


@dataclass(frozen=True)
class LoraFile:
    """A request's LoRA on this worker's disk (fetched by the engine), at its scale."""

    path: Path
    digest: str  # sha256 of the file: names the adapter on the GPU
    name: str  # the source as people read it, for messages
    scale: float


@dataclass
class GenerationInputs:
    """The images a request brings (read back from storage by the worker), and its LoRAs."""

    images: list[Image.Image] = field(default_factory=list)
    mask: Image.Image | None = None
    loras: list[LoraFile] = field(default_factory=list)


class Runner(Protocol):
    name: str  # for the log: the models it serves
    model_names: list[str]

    def load(self) -> None:
        """Load weights onto the device; called once in the worker before any job."""
        ...

    def generate(
        self,
        request: GenerationRequest,
        inputs: GenerationInputs,
        on_step: OnStep,
        should_stop: ShouldStop,
    ) -> list[Image.Image]:
        """Make the request's images; raises GenerationCancelled when should_stop says so."""
        ...
