"""The worker's share of safety: rewrite the prompt, check it and the inputs before
generating, check each output before it is stored. Never on intermediate steps.

The term list already ran on the original prompt in the API; here the prompt classifier
runs, and the term list runs again on a rewritten prompt. Each check that ran leaves its
verdict on the job's report.
"""

from __future__ import annotations

import dataclasses
import logging

from PIL import Image

from fluxserve.domain import GenerationRequest, Job, JobReport
from fluxserve.prompting.upsample import Upsampler, UpsamplingFailed
from fluxserve.runtime.base import GenerationInputs
from fluxserve.safety.checks import SafetyChecks
from fluxserve.safety.policy import refusal_message
from fluxserve.safety.verdict import Verdict

logger = logging.getLogger(__name__)

NO_UPSAMPLER = "prompt upsampling is not configured on this server; the prompt was used as sent"


@dataclasses.dataclass
class Admitted:
    """What ``before`` decided: the request to generate from, or why it was refused."""

    request: GenerationRequest
    report: JobReport
    refusal: str | None = None


class Moderation:
    def __init__(self, checks: SafetyChecks, upsampler: Upsampler | None = None) -> None:
        self.checks = checks
        self.upsampler = upsampler

    def before(self, job: Job, inputs: GenerationInputs) -> Admitted:
        """Rewrite the prompt if asked, then check it and every input image."""
        request = job.request
        report = JobReport(verdicts=list(job.report.verdicts), notes=list(job.report.notes),
                           loras=list(job.report.loras))  # fmt: skip
        if request.prompt_upsampling:
            prompt = self._upsample(job.id, request.prompt, report)
            if prompt != request.prompt:
                report.prompt = prompt
                request = dataclasses.replace(request, prompt=prompt)
        tolerance = request.safety_tolerance
        verdict = self.checks.check_prompt(request.prompt, tolerance).at("prompt")
        if not self._record(verdict, report):
            return Admitted(request, report, refusal_message(verdict.category))
        for index, image in enumerate(inputs.images):
            verdict = self.checks.check_image(image, tolerance).at(f"input:{index}")
            if not self._record(verdict, report):
                message = f"Input image {index + 1} was refused by the content policy " \
                          f"({verdict.category}, score {verdict.score:.2f})."  # fmt: skip
                return Admitted(request, report, message)
        return Admitted(request, report)

    def after(
        self, request: GenerationRequest, images: list[Image.Image], report: JobReport
    ) -> list[Image.Image]:
        """Each output checked; a blocked one is replaced by a black image of its size."""
        if not self.checks.checks_images:
            return images
        kept = []
        for index, image in enumerate(images):
            verdict = self.checks.check_image(image, request.safety_tolerance)
            if self._record(verdict.at(f"output:{index}"), report):
                kept.append(image)
            else:
                report.blocked_outputs.append(index)
                kept.append(Image.new("RGB", image.size))
        return kept

    def _upsample(self, job_id: str, prompt: str, report: JobReport) -> str:
        if self.upsampler is None:
            report.notes.append(NO_UPSAMPLER)
            return prompt
        try:
            rewritten = self.upsampler.rewrite(prompt)
        except UpsamplingFailed as exc:
            note = f"prompt upsampling failed ({exc}); the prompt was used as sent"
            logger.warning("job %s: %s", job_id, note)
            report.notes.append(note)
            return prompt
        logger.info("job %s: prompt rewritten by %s", job_id, self.upsampler.name)
        return rewritten

    @staticmethod
    def _record(verdict: Verdict, report: JobReport) -> bool:
        if verdict.checker != "none":  # no checker ran: nothing to record
            report.verdicts.append(verdict.to_dict())
        return verdict.allowed
