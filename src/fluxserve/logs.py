"""Logging set-up for the CLI, the server and worker processes."""

from __future__ import annotations

import logging
import os


def configure_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s",
        force=True,
    )
    # Library chatter that says nothing to an operator of this server.
    for noisy in ("httpx", "httpcore", "huggingface_hub.file_download"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # transformers reads this when first imported: it hides its notes about optional
    # packages (torchvision) that this server does not use.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
