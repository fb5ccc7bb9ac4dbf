"""Optimisation tiers: what the engine does to a model to make it faster, and what falls
back when the hardware cannot do it. Pure decisions, no torch: ``optimize.py`` applies them.

The tiers are ordered; each adds to the one below it:

- ``lossless``: bf16 weights, fused QKV projections, the best attention kernel installed,
  a regionally compiled transformer and a compiled channels-last VAE decoder (on CUDA).
  The math is the same as plain diffusers up to float rounding.
- ``fp8``: the transformer's linear layers in FP8, weights and activations, with row-wise
  scales (torchao), on GPUs with FP8 tensor cores (compute capability 8.9: Ada, Hopper+).
- ``cache``: fp8 plus a step cache (diffusers' First-Block cache): a step whose first
  transformer block changes the residual less than a threshold reuses the last step's
  output of the other blocks.

fal's ``acceleration`` asks for a tier per request (``none``, ``regular``, ``high``). A job
runs at the lower of what it asks for and the tier its model was loaded at; the FP8 weights
replace the bf16 ones, so a model loaded at fp8 serves ``none`` at fp8 without the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

# Below this CUDA compute capability GPUs have no FP8 tensor cores (Ada is 8.9, Hopper 9.0).
FP8_MIN_CAPABILITY = (8, 9)
# First-Block cache threshold: the relative change of the first block's residual under which
# a step reuses the last one. diffusers' examples use 0.2 for speed; 0.05 skips fewer steps
# and keeps images closer to the uncached ones.
STEP_CACHE_THRESHOLD = 0.05


class Tier(StrEnum):
    LOSSLESS = "lossless"
    FP8 = "fp8"
    CACHE = "cache"

    @property
    def rank(self) -> int:
        return list(Tier).index(self)


# fal's ``acceleration`` values and the tier each asks for.
ACCELERATION_TIERS: dict[str, Tier] = {
    "none": Tier.LOSSLESS,
    "regular": Tier.FP8,
    "high": Tier.CACHE,
}


def job_tier(acceleration: str | None, model_tier: Tier) -> Tier:
    """The tier a job runs at: what it asks for, capped at its model's tier.

    A job that asks for nothing (BFL, OpenAI, or fal without ``acceleration``) gets the
    model's tier.
    """
    if acceleration is None:
        return model_tier
    wanted = ACCELERATION_TIERS.get(acceleration, model_tier)
    return min(wanted, model_tier, key=lambda tier: tier.rank)


@dataclass(frozen=True)
class Capabilities:
    """What this machine can run; ``optimize.probe`` reads it off torch and the imports."""

    device_type: str  # "cuda" or "cpu"
    cuda_capability: tuple[int, int] | None = None
    have_torchao: bool = False
    attention_backends: tuple[str, ...] = ()  # diffusers backends installed, best first
    can_compile: bool = False  # torch.compile has a working backend for this device


@dataclass(frozen=True)
class TierPlan:
    """What the engine does to one model, and the log lines saying what fell back."""

    tier: Tier  # the tier asked for
    effective: Tier  # the tier that runs after fallbacks
    fuse_qkv: bool
    attention_backend: str | None  # None: diffusers' default (PyTorch SDPA)
    compile: bool
    cuda_graphs: bool  # the compiled blocks replayed as CUDA graphs
    fp8_weights: bool
    step_cache: bool
    cache_threshold: float = STEP_CACHE_THRESHOLD
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        parts = [f"tier {self.effective}"]
        if self.effective != self.tier:
            parts[0] += f" (asked for {self.tier})"
        parts.append("fused QKV" if self.fuse_qkv else "unfused QKV")
        parts.append(f"attention {self.attention_backend or 'sdpa'}")
        parts.append("compiled" if self.compile else "eager")
        if self.cuda_graphs:
            parts.append("CUDA graphs")
        if self.fp8_weights:
            parts.append("fp8 linear layers")
        if self.step_cache:
            parts.append(f"step cache (first-block, threshold {self.cache_threshold})")
        return ", ".join(parts)


def plan_tier(
    tier: Tier,
    caps: Capabilities,
    compile_mode: str = "auto",
    weights_quantized: bool = False,
    cache_threshold: float = STEP_CACHE_THRESHOLD,
    cuda_graphs: bool = False,
    step_cache_works: bool = True,
) -> TierPlan:
    """Decide what runs for ``tier`` on this machine; every part it cannot run falls back
    to the tier below, with a note saying so.

    ``step_cache_works``: False for transformers diffusers' First-Block cache cannot hook
    (FLUX.2's in diffusers 0.42: its pipelines fail under the hook).

    ``compile_mode`` is the operator's ``--compile`` (auto: on CUDA only, where it pays
    for its warm-up). ``weights_quantized``: a memory preset already stored the transformer
    in fp8 or nf4, so the fp8 tier's quantisation has nothing left to do.
    """
    notes: list[str] = []
    on_cuda = caps.device_type == "cuda"

    compile_wanted = compile_mode == "on" or (compile_mode == "auto" and on_cuda)
    compile_now = compile_wanted and caps.can_compile
    if compile_wanted and not compile_now:
        notes.append("torch.compile has no working backend here: the transformer runs eager")

    fp8 = tier.rank >= Tier.FP8.rank
    if fp8 and weights_quantized:
        notes.append("the memory preset already quantised the transformer: fp8 adds nothing")
        fp8 = False
    elif fp8:
        reason = fp8_unavailable(caps)
        if reason:
            notes.append(f"tier {tier} falls back to lossless weights: {reason}")
            fp8 = False

    effective = tier
    if tier is Tier.FP8 and not fp8:
        effective = Tier.LOSSLESS
    # The step cache runs anywhere; without fp8 the cache tier runs it on bf16 weights.
    step_cache = tier is Tier.CACHE and step_cache_works
    if tier is Tier.CACHE and not step_cache_works:
        notes.append(
            "the First-Block step cache does not run on this transformer (FLUX.2 in "
            "diffusers 0.42): the cache tier runs without it"
        )
        effective = Tier.FP8 if fp8 else Tier.LOSSLESS
    graphs = cuda_graphs and compile_now and on_cuda and not step_cache
    if cuda_graphs and not graphs:
        why = (
            "the step cache keeps block outputs across steps, which a graph replay overwrites"
            if step_cache
            else "they need CUDA and a compiled transformer"
        )
        notes.append(f"CUDA graphs are off: {why}")
    return TierPlan(
        tier=tier,
        effective=effective,
        # Fusing concatenates the Q, K and V weights; quantised weights cannot be.
        fuse_qkv=not weights_quantized,
        attention_backend=caps.attention_backends[0] if caps.attention_backends else None,
        compile=compile_now,
        cuda_graphs=graphs,
        fp8_weights=fp8,
        step_cache=step_cache,
        cache_threshold=cache_threshold,
        notes=notes,
    )


def fp8_unavailable(caps: Capabilities) -> str | None:
    """Why this machine cannot run FP8 linear layers, or None when it can."""
    if caps.device_type != "cuda":
        return "FP8 matmuls need a CUDA GPU"
    if caps.cuda_capability is not None and caps.cuda_capability < FP8_MIN_CAPABILITY:
        major, minor = caps.cuda_capability
        return f"this GPU (compute capability {major}.{minor}) has no FP8 tensor cores (8.9+)"
    if not caps.have_torchao:
        return "torchao is not installed (pip install 'fluxserve[fp8]')"
    return None


def parse_tiers(items: list[str], model_names: list[str]) -> dict[str, Tier]:
    """``--tier`` values (``TIER`` for every model, ``MODEL=TIER`` for one) as a tier per
    model; later items win. ValueError names a bad tier or model."""
    allowed = ", ".join(t.value for t in Tier)
    tiers = dict.fromkeys(model_names, Tier.LOSSLESS)
    for item in items:
        name, sep, value = item.rpartition("=")
        value = value.strip()
        if value not in {t.value for t in Tier}:
            raise ValueError(f"--tier {item!r}: the tier must be one of {allowed}")
        if not sep:
            tiers = dict.fromkeys(model_names, Tier(value))
        elif name.strip() in tiers:
            tiers[name.strip()] = Tier(value)
        else:
            raise ValueError(
                f"--tier {item!r}: no model {name.strip()!r} is loaded "
                f"(loaded: {', '.join(model_names)})"
            )
    return tiers
