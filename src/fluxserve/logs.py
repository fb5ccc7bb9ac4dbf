"""Logging set-up for the CLI, the server and worker processes: text or JSON lines.

``--log-format json`` writes one JSON object per line: ``time`` (UTC, ISO 8601), ``level``,
``logger``, ``process``, ``message``, and ``job_id`` when the line concerns one job (``job_ids``
for a batch), plus ``exception`` with the traceback. Code that works on a job wraps it in
``job_context(job.id)``, so every line logged meanwhile in that thread names the job, or
passes ``extra={"job_id": ...}`` on one line.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(processName)s %(name)s: %(message)s"

# The job the current thread (or task) works on, for the job_id of its log lines.
_current_job: ContextVar[str | None] = ContextVar("fluxserve_job_id", default=None)


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Lines logged inside carry ``job_id`` (unless a line names its own)."""
    token = _current_job.set(job_id)
    try:
        yield
    finally:
        _current_job.reset(token)


class JobIdFilter(logging.Filter):
    """Puts the current job's id on records that do not carry one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            job_id = _current_job.get()
            if job_id is not None:
                record.job_id = job_id
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "message": record.getMessage(),
        }
        for key in ("job_id", "job_ids"):
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def make_handler(log_format: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    """A stream handler (stderr by default) writing ``log_format`` lines."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    handler = logging.StreamHandler(stream)
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    handler.addFilter(JobIdFilter())
    return handler


def configure_logging(level: str = "info", log_format: str = "text") -> None:
    logging.basicConfig(level=level.upper(), handlers=[make_handler(log_format)], force=True)
    # A log collector reads JSON lines only: Python warnings become records too.
    logging.captureWarnings(log_format == "json")
    # Library chatter that says nothing to an operator of this server.
    for noisy in ("httpx", "httpcore", "huggingface_hub.file_download"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # transformers reads this when first imported: it hides its notes about optional
    # packages (torchvision) that this server does not use.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
