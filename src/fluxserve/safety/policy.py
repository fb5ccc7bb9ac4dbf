"""What the API decides before a job is queued: the tolerance to apply and the term check.

Torch-free: the classifiers run later, in the worker. A prompt the term list refuses still
becomes a job, created already ended as request_moderated, so every dialect reports it the
way its clients expect (BFL polls to "Request Moderated", fal answers 422, OpenAI 400).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fluxserve.domain import GenerationRequest, JobReport
from fluxserve.safety.terms import TermList
from fluxserve.safety.tolerance import MAX_TOLERANCE, clamp_tolerance


@dataclass
class SafetyPolicy:
    terms: TermList | None = None
    max_tolerance: int = MAX_TOLERANCE

    def admit(self, request: GenerationRequest) -> tuple[GenerationRequest, JobReport, str | None]:
        """The request with its tolerance clamped, the report so far, and the reason the
        prompt is refused (None: it may be queued)."""
        report = JobReport()
        tolerance, note = clamp_tolerance(request.safety_tolerance, self.max_tolerance)
        if note is not None:
            report.notes.append(note)
            request = dataclasses.replace(request, safety_tolerance=tolerance)
        if self.terms is None:
            return request, report, None
        verdict = self.terms.check(request.prompt).at("prompt")
        if verdict.allowed:
            return request, report, None
        report.verdicts.append(verdict.to_dict())
        return request, report, refusal_message(verdict.category)


def refusal_message(category: str) -> str:
    return f"The request was refused by the content policy ({category})."
