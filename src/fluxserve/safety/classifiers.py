"""Classifiers through transformers pipelines: an NSFW image checker and a prompt checker.

Loaded lazily, on first use, in the worker and on its device (torch is imported here only
when a classifier loads). The score of an input is the probability the model gives to its
labels that are not safe ones, so any binary or multi-class model works: Falconsai's
``normal``/``nsfw``, a toxicity model's ``non-toxic``/``toxic``...
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from PIL import Image

from fluxserve.errors import ModelLoadError
from fluxserve.safety.tolerance import threshold_for
from fluxserve.safety.verdict import Verdict

logger = logging.getLogger(__name__)

SAFE_LABELS = frozenset(
    {"normal", "safe", "sfw", "neutral", "non-toxic", "not toxic", "ok", "label_0", "negative"}
)
DEFAULT_IMAGE_CHECKER = "Falconsai/nsfw_image_detection"


class Classifier:
    """A transformers classification pipeline scored as P(unsafe)."""

    def __init__(self, task: str, path: Path, name: str, device: str = "cpu") -> None:
        self.task = task  # "image-classification" or "text-classification"
        self.path = path
        self.name = name
        self.device = device
        self._pipeline: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load now (the worker does, before it says it is ready) rather than on first use."""
        self._load()

    def _load(self) -> Any:
        with self._lock:
            if self._pipeline is None:
                from transformers import pipeline

                try:
                    self._pipeline = pipeline(self.task, model=str(self.path), device=self.device)
                except (OSError, ValueError) as exc:
                    raise ModelLoadError(
                        f"Could not load the safety classifier {self.name}: {exc}"
                    ) from exc
                logger.info("loaded safety classifier %s (%s)", self.name, self.task)
        return self._pipeline

    def score(self, content: str | Image.Image) -> tuple[float, str]:
        """P(unsafe) and the most likely unsafe label."""
        if isinstance(content, Image.Image):
            content = content.convert("RGB")
        scores = self._load()(content, top_k=None)
        if scores and isinstance(scores[0], list):  # some pipelines nest one level
            scores = scores[0]
        unsafe = [s for s in scores if s["label"].lower() not in SAFE_LABELS]
        if not unsafe:
            return 0.0, "ok"
        top = max(unsafe, key=lambda s: s["score"])
        return float(sum(s["score"] for s in unsafe)), top["label"].lower()

    def check(self, content: str | Image.Image, tolerance: int) -> Verdict:
        score, label = self.score(content)
        blocked = score >= threshold_for(tolerance)
        return Verdict(
            allowed=not blocked,
            category=label if blocked else "ok",
            score=score,
            checker=self.name,
            tolerance=tolerance,
        )
