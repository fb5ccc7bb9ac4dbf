"""Which safety models and prompt rewriter a deployment uses, resolved before start.

Resolved in the server (torch-free, with one clear sentence when weights are missing), then
handed to the worker, which loads them on its device when first needed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fluxserve.config import Settings
from fluxserve.safety.checks import SafetyChecks
from fluxserve.safety.classifiers import DEFAULT_IMAGE_CHECKER, Classifier
from fluxserve.safety.terms import load_terms
from fluxserve.weights import ResolvedModel, resolve_aux_model


@dataclass(frozen=True)
class SafetySetup:
    image_checker: tuple[str, Path] | None = None  # (name, local directory)
    prompt_classifier: tuple[str, Path] | None = None
    upsampler_model: tuple[str, Path] | None = None  # a local causal LM, when not a URL


def image_checker_ref(settings: Settings, models: Iterable[ResolvedModel]) -> str | None:
    """``--image-checker``; ``auto`` means the default checker unless every loaded model is
    a random-weight test model (their noise has nothing to moderate, and they run offline)."""
    if settings.image_checker == "off":
        return None
    if settings.image_checker == "auto":
        real = any(not model.spec.random_weights for model in models)
        return DEFAULT_IMAGE_CHECKER if real else None
    return settings.image_checker


def resolve_safety(settings: Settings, models: Iterable[ResolvedModel]) -> SafetySetup:
    image_ref = image_checker_ref(settings, list(models))
    prompt_ref = None if settings.prompt_classifier == "off" else settings.prompt_classifier
    upsampler = settings.prompt_upsampler
    local_upsampler = upsampler is not None and not upsampler.startswith(("http://", "https://"))
    return SafetySetup(
        image_checker=_resolved(image_ref, "--image-checker"),
        prompt_classifier=_resolved(prompt_ref, "--prompt-classifier"),
        upsampler_model=_resolved(upsampler if local_upsampler else None, "--prompt-upsampler"),
    )


def _resolved(ref: str | None, what: str) -> tuple[str, Path] | None:
    return None if ref is None else (ref, resolve_aux_model(ref, what))


def build_checks(setup: SafetySetup, settings: Settings, device: str) -> SafetyChecks:
    """The worker's checkers (the classifiers load on first use)."""

    def classifier(task: str, entry: tuple[str, Path] | None) -> Classifier | None:
        return None if entry is None else Classifier(task, entry[1], entry[0], device)

    return SafetyChecks(
        terms=load_terms(settings.blocked_terms),
        prompt_classifier=classifier("text-classification", setup.prompt_classifier),
        image_classifier=classifier("image-classification", setup.image_checker),
    )
