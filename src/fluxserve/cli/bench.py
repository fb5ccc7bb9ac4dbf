"""``fluxserve bench``: fluxserve's engine against plain diffusers, measured in one run.

The options and the printing; what is run and measured, and how: ``fluxserve.runtime.bench``.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path
from typing import Any

from fluxserve.runtime.bench import options  # torch-free


def add_bench_parser(commands: Any) -> None:
    """Register ``fluxserve bench`` (torch-free: the parser is built for every command)."""
    bench = commands.add_parser(
        "bench",
        help="Time fluxserve's engine at each tier and batch size against plain diffusers.",
        description="Time fluxserve's engine against plain diffusers on one model, in one run.",
    )
    arg = bench.add_argument
    arg(
        "--model",
        default="tiny",
        help="Registry name, Hugging Face repo id or diffusers "
        "directory (default: tiny, built offline).",
    )
    arg(
        "--random-weights",
        action="store_true",
        help="Build the registry model (flux-schnell, flux-dev, flux-kontext-dev, "
        "flux-fill-dev, flux2-klein-4b, flux2-klein-9b, their base models, flux2-dev) at full "
        "size with random weights, offline, instead of loading its weights.",
    )
    arg(
        "--size",
        type=options.parse_size,
        help="WxH; default: the model's default size (1024x1024; tiny 256x256).",
    )
    arg("--steps", type=options.positive_int, help="Default: the model's.")
    arg(
        "--tiers",
        type=options.parse_tier_list,
        default=list(options.TIER_NAMES),
        help="fluxserve tiers to time (default: lossless,fp8,cache).",
    )
    arg(
        "--batch",
        type=options.parse_batches,
        default=[1, 2, 4],
        help="Batch sizes (default: 1,2,4).",
    )
    arg("--runs", type=options.positive_int, default=5, help="Timed calls per row (default: 5).")
    arg("--warmup", type=int, default=1, help="Untimed calls before them (default: 1).")
    arg("--json", type=Path, help="Write hardware, versions, config and results to this file.")
    arg("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
    arg(
        "--compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="fluxserve's --compile (auto: on CUDA only).",
    )
    arg(
        "--cuda-graphs",
        action="store_true",
        help="fluxserve's --cuda-graphs: replay the compiled blocks as CUDA graphs.",
    )
    arg(
        "--memory-fraction",
        type=float,
        help="torch.cuda.set_per_process_memory_fraction(F), 0 < F <= 1; ignored on CPU.",
    )
    arg(
        "--order",
        choices=["auto", "interleaved", "sequential"],
        default="auto",
        help="interleaved: all engines loaded, timed calls alternate between them (cancels "
        "a drifting machine's speed; no peak memory); sequential: one engine at a time (its "
        "own peak memory). auto: sequential on CUDA, interleaved on CPU.",
    )
    arg(
        "--step-cache-threshold",
        type=float,
        help="The cache tier's First-Block threshold (default: fluxserve's).",
    )
    arg(
        "--memory-preset",
        choices=["none", "auto", "80gb", "24gb", "16gb", "12gb"],
        default="none",
        help="fluxserve's --memory-preset for the engine (default none: weights stored as "
        "the baseline's); with --memory-fraction, measures a preset on a smaller GPU.",
    )
    arg(
        "--prompt-cache",
        action="store_true",
        help="Let the engine cache prompt embeddings "
        "(default off: both sides run the text encoders on every call).",
    )
    arg(
        "--lora",
        type=Path,
        action="append",
        default=[],
        help="A .safetensors LoRA for the model (repeat, two or more): also time switching "
        "between them by load/unload and by hot-swap.",
    )
    arg("--prompt", default=options.DEFAULT_PROMPT)
    arg("--seed", type=int, default=0, help="Batch b uses seeds SEED .. SEED+b-1.")
    arg("--guidance", type=float, help="Default: the model's.")
    arg(
        "--threads",
        type=options.positive_int,
        help="torch CPU threads for both sides (default: what a worker picks).",
    )
    arg("--data-dir", type=Path, help="Where the tiny model is built [env FLUXSERVE_DATA_DIR].")
    arg("--log-level", default="warning")


def bench(args: argparse.Namespace) -> int:
    from fluxserve.config import Settings
    from fluxserve.logs import configure_logging
    from fluxserve.runtime import bench as engine

    engine.check_args(args)
    configure_logging(args.log_level)
    settings = Settings(data_dir=args.data_dir) if args.data_dir else Settings()
    setup = engine.prepare(args, settings.models_dir)
    print(engine.describe_run(setup.hw, setup.vers, setup.config), flush=True)
    progress = partial(print, flush=True)
    results = engine.measure(setup, args, settings.compile_cache_dir, progress)

    print()
    print(engine.table(results))
    print()
    for name, plan in setup.config["plans"].items():
        print(f"{name}: {plan}")
    if args.lora:
        from fluxserve.runtime.bench.engines import load_baseline
        from fluxserve.runtime.bench.loras import describe_switch, measure_switch

        pipeline = load_baseline(setup.work, setup.device, setup.dtype)
        switch = measure_switch(pipeline, args.lora, args.runs, setup.work.model.name)
        setup.config["lora_switch"] = switch
        print(describe_switch(switch))
    if args.json:
        engine.write_report(args.json, setup.hw, setup.vers, setup.config, results)
        print(f"wrote {args.json}")
    return 0
