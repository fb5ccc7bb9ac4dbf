"""A Runner over diffusers' FluxPipeline."""

from __future__ import annotations

import logging

import diffusers
import torch
import transformers
from diffusers import FluxPipeline
from PIL import Image

from fluxserve.domain import GenerationRequest
from fluxserve.errors import GenerationCancelled, ModelLoadError
from fluxserve.runtime.base import OnStep, ShouldStop
from fluxserve.runtime.device import configure_threads, pick_device, pick_dtype
from fluxserve.specs import ModelKind
from fluxserve.weights import ResolvedModel

logger = logging.getLogger(__name__)


class FluxRunner:
    """Generates with ``FluxPipeline``; owns the loop around it, not the math inside."""

    def __init__(
        self, model: ResolvedModel, device: str = "auto", threads: int | None = None
    ) -> None:
        self.model = model
        self.name = model.name
        self._requested_device = device
        self._threads = threads
        self.pipeline: FluxPipeline | None = None

    def load(self) -> None:
        if self.model.needs_build:
            from fluxserve.runtime.tiny import make_tiny

            make_tiny(self.model.path)
        if self.model.spec.kind is ModelKind.TEST:
            logger.warning(
                "model %r has random weights: its images are noise. It is for trying the API "
                "and for tests; load flux-schnell or flux-dev for real pictures.",
                self.name,
            )
        # Per-component loading bars mean nothing in a server log.
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
        device = pick_device(self._requested_device)
        dtype = pick_dtype(device)
        try:
            pipeline = FluxPipeline.from_pretrained(self.model.path, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"Could not load {self.name} from {self.model.path}: {exc}"
            ) from exc
        pipeline.set_progress_bar_config(disable=True)
        self.pipeline = pipeline.to(device)
        threads = configure_threads(device, self._threads)
        logger.info("loaded %s on %s (%s, %d CPU threads)", self.name, device, dtype, threads)

    def generate(
        self, request: GenerationRequest, on_step: OnStep, should_stop: ShouldStop
    ) -> list[Image.Image]:
        if self.pipeline is None:
            raise RuntimeError("FluxRunner.generate called before load()")
        steps = request.steps
        cancelled = False

        def step_end(pipe, step: int, _timestep, callback_kwargs):
            nonlocal cancelled
            on_step(step + 1, steps)
            if should_stop():
                cancelled = True
                pipe._interrupt = True  # diffusers' documented way to stop the loop
            return callback_kwargs

        # Noise from a seeded CPU generator: the same seed gives the same image on any device.
        generator = torch.Generator("cpu").manual_seed(request.seed)
        spec = self.model.spec
        with torch.inference_mode():
            output = self.pipeline(
                prompt=request.prompt,
                width=request.width,
                height=request.height,
                num_inference_steps=steps,
                # schnell ignores guidance; the pipeline needs a number anyway.
                guidance_scale=request.guidance if request.guidance is not None else 0.0,
                max_sequence_length=spec.max_sequence_length,
                num_images_per_prompt=request.num_images,  # one batch, noise from one seed
                generator=generator,
                callback_on_step_end=step_end,
            )
        if cancelled:
            raise GenerationCancelled("generation stopped before its last step")
        return list(output.images)
