"""The engine behind ``fluxserve bench``: fluxserve's engine against plain diffusers, measured
in one run.

On one model, prompt, seed, size and step count, one after another in this process:

- **diffusers**: the model's own diffusers pipeline (``FluxPipeline`` or the Kontext / Fill
  class), eager: ``from_pretrained`` of the model directory (or, with ``--random-weights``,
  a fresh build of the same seeded weights), the same dtype and device as the engine, PyTorch
  SDPA attention, no fused projections, no compilation, no step cache. It gets exactly the
  arguments ``FluxRunner`` passes (seeded CPU generators, ``max_sequence_length``, guidance,
  ``inference_mode``, no progress bar).
- **fluxserve**: a ``FluxRunner`` per tier (``tiers={model: tier}``, ``--compile``), batch 1
  through ``runner.generate`` and batch b through ``runner.generate_batch`` with b requests
  of one image each (seeds ``seed .. seed+b-1``, as the baseline's b generators).

The prompt cache is off by default, so the text encoders run on every call on both sides;
``--prompt-cache`` turns it on for the engine (the JSON config says so) to show what a
repeated prompt saves.

For each (engine, tier, batch): ``--warmup`` untimed calls, then ``--runs`` timed calls, in
one of two orders (``--order``; the config records which):

- sequential (default on CUDA): one engine holds the model at a time (the last is freed
  before the next loads), so each peak-memory figure is that engine's alone;
- interleaved (default on CPU): all engines loaded at once, and each timed round calls every
  engine once, the order reversed every round. On a shared VM the machine's speed drifts by
  10-20 % within a minute; sequential rows then differ by that much for identical work
  (measured on the development VM), interleaved ones do not.

- s/image: the median of the calls' wall times (device synchronised before and after),
  divided by the batch; it includes text encoding, denoising, VAE decoding and conversion to
  PIL images. images/s is batch / that median.
- ms/step: from the start of the transformer's first call (a forward pre-hook) to the end of
  the last step (diffusers' ``callback_on_step_end``), over the steps run, median over the
  calls; on CUDA both instants are taken after a device synchronisation. A step is the
  whole batch's step.
- peak memory: ``torch.cuda.max_memory_allocated``, reset after the warm-up, so it is the
  timed calls' peak with the weights resident; null on CPU.

Nothing is estimated: every figure is measured in the run that prints it.

Torch-free to import (torch, diffusers and transformers load inside the functions that use
them): ``options`` (defaults and argparse types), ``timing`` (the clock and the runs),
``engines`` (the model and the two engines), ``report`` (hardware, versions, the table, the
JSON), ``session`` (a whole run).
"""

from fluxserve.runtime.bench.engines import (
    Workload,
    baseline_call,
    load_baseline,
    load_diffusers,
    load_fluxserve,
    make_runner,
    resolve_workload,
    runner_call,
)
from fluxserve.runtime.bench.options import (
    DEFAULT_PROMPT,
    TIER_NAMES,
    check_args,
    parse_batches,
    parse_size,
    parse_tier_list,
    positive_int,
)
from fluxserve.runtime.bench.report import (
    cpu_model,
    describe_run,
    hardware,
    ratio,
    run_config,
    spread,
    table,
    versions,
    write_report,
)
from fluxserve.runtime.bench.session import BenchSetup, measure, prepare, set_memory_fraction
from fluxserve.runtime.bench.timing import (
    Engine,
    Progress,
    Result,
    StepClock,
    free_memory,
    progress_line,
    run_interleaved,
    run_sequential,
    synchronize,
    timed_call,
    warm_up,
)

__all__ = [
    "DEFAULT_PROMPT",
    "TIER_NAMES",
    "BenchSetup",
    "Engine",
    "Progress",
    "Result",
    "StepClock",
    "Workload",
    "baseline_call",
    "check_args",
    "cpu_model",
    "describe_run",
    "free_memory",
    "hardware",
    "load_baseline",
    "load_diffusers",
    "load_fluxserve",
    "make_runner",
    "measure",
    "parse_batches",
    "parse_size",
    "parse_tier_list",
    "positive_int",
    "prepare",
    "progress_line",
    "ratio",
    "resolve_workload",
    "run_config",
    "run_interleaved",
    "run_sequential",
    "runner_call",
    "set_memory_fraction",
    "spread",
    "synchronize",
    "table",
    "timed_call",
    "versions",
    "warm_up",
    "write_report",
]
