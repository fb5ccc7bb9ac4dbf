"""The BlobStorage protocol: where result images live and how clients reach them."""

from __future__ import annotations

import re
from typing import Protocol

_KEY = re.compile(r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*\.[A-Za-z0-9]+$")


def result_key(job_id: str, attempt: int, index: int, extension: str) -> str:
    """``results/<job-id>/<attempt>-<n>.<ext>``: the one naming scheme for result images.

    The attempt is in the name so that a worker which lost its lease, and writes its image
    anyway before it learns so, cannot overwrite the image of the attempt that completes.
    """
    return f"results/{job_id}/{attempt}-{index}.{extension}"


def input_key(job_id: str, name: str) -> str:
    """``inputs/<job-id>/<name>.png``: a job's input images, kept for a retry."""
    return f"inputs/{job_id}/{name}.png"


def job_prefixes(job_id: str) -> list[str]:
    """Every folder that holds a job's blobs (a lost attempt's stray files included)."""
    return [f"results/{job_id}", f"inputs/{job_id}"]


def is_valid_key(key: str) -> bool:
    """Keys are plain relative paths: no '..', no absolute paths, no odd characters."""
    return bool(_KEY.match(key))


class BlobStorage(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    def get(self, key: str) -> bytes:
        """The blob's bytes; raises StorageError if it does not exist."""
        ...

    def delete(self, key: str) -> None:
        """Remove a blob; no error if it is already gone."""
        ...

    def delete_prefix(self, prefix: str) -> None:
        """Remove every blob under the folder ``prefix``; no error if there is none."""
        ...

    def url(self, key: str, base_url: str, ttl_seconds: int) -> str:
        """An absolute URL that lets a client fetch ``key`` until it expires."""
        ...
