"""SafetyChecks: the configured checkers behind ``check_prompt`` and ``check_image``."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from fluxserve.safety.classifiers import Classifier
from fluxserve.safety.terms import TermList
from fluxserve.safety.verdict import Verdict, allowed


@dataclass
class SafetyChecks:
    """Each checker is optional: one left out (turned off) always allows."""

    terms: TermList | None = None
    prompt_classifier: Classifier | None = None
    image_classifier: Classifier | None = None

    def check_prompt(self, text: str, tolerance: int) -> Verdict:
        """The term list first (cheap, and a policy at every tolerance), then the model."""
        if self.terms is not None:
            verdict = self.terms.check(text)
            if not verdict.allowed:
                return verdict
        if self.prompt_classifier is not None:
            return self.prompt_classifier.check(text, tolerance)
        return allowed("none")

    def check_image(self, image: Image.Image, tolerance: int) -> Verdict:
        if self.image_classifier is None:
            return allowed("none")
        return self.image_classifier.check(image, tolerance)

    def load(self) -> None:
        """Load the classifiers, so a missing or broken one stops the worker at start."""
        for classifier in (self.prompt_classifier, self.image_classifier):
            if classifier is not None:
                classifier.load()

    @property
    def checks_images(self) -> bool:
        return self.image_classifier is not None
