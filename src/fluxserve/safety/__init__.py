"""Moderation: verdicts on prompts and images, at three points, recorded on the job.

``check_prompt`` and ``check_image`` (on ``SafetyChecks``) return a ``Verdict``. The prompt
term list runs in the API before a job is queued; the classifiers (a text classifier for
prompts, an NSFW image classifier for input and output images) run in the worker, on its
device. Thresholds come from one table indexed by ``safety_tolerance``.
"""

from fluxserve.safety.checks import SafetyChecks
from fluxserve.safety.tolerance import TOLERANCE_THRESHOLDS, clamp_tolerance, threshold_for
from fluxserve.safety.verdict import Verdict

__all__ = ["TOLERANCE_THRESHOLDS", "SafetyChecks", "Verdict", "clamp_tolerance", "threshold_for"]
