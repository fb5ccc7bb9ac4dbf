"""The bench's options: defaults, argparse value types and the checks argparse cannot make
(torch-free: ``fluxserve``'s parser is built for every command)."""

from __future__ import annotations

import argparse

DEFAULT_PROMPT = "a lighthouse on a rocky cliff at dusk, waves breaking below"
TIER_NAMES = ("lossless", "fp8", "cache")


def parse_size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    try:
        size = (int(width), int(height)) if sep else None
    except ValueError:
        size = None
    if size is None or min(size) < 64 or size[0] % 16 or size[1] % 16:
        raise argparse.ArgumentTypeError(
            f"--size must be WxH, multiples of 16 and at least 64, got {text!r}"
        )
    return size


def parse_batches(text: str) -> list[int]:
    try:
        batches = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise argparse.ArgumentTypeError(f"--batch takes sizes like 1,2,4, got {text!r}")
    return list(dict.fromkeys(batches))


def parse_tier_list(text: str) -> list[str]:
    tiers = [item.strip() for item in text.split(",") if item.strip()]
    bad = [tier for tier in tiers if tier not in TIER_NAMES]
    if not tiers or bad:
        raise argparse.ArgumentTypeError(
            f"--tiers takes a list of {', '.join(TIER_NAMES)}, got {text!r}"
        )
    return list(dict.fromkeys(tiers))


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def check_args(args: argparse.Namespace) -> None:
    from fluxserve.errors import ConfigurationError

    if args.warmup < 0:
        raise ConfigurationError("--warmup must be 0 or more")
    if args.memory_fraction is not None and not 0 < args.memory_fraction <= 1:
        raise ConfigurationError("--memory-fraction must lie in (0, 1]")
