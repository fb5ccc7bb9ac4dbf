"""Blobs on the local disk, served by the API at signed URLs (``/files/<key>``)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlencode

from fluxserve.errors import StorageError
from fluxserve.storage.base import is_valid_key
from fluxserve.storage.signing import UrlSigner, load_or_create_secret


def fsync_directory(path: Path) -> None:
    """Make a rename in ``path`` durable (POSIX: the entry lives in the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage:
    def __init__(self, root: Path, secret_path: Path) -> None:
        self.root = root
        self.signer = UrlSigner(load_or_create_secret(secret_path))

    def _path(self, key: str) -> Path:
        if not is_valid_key(key):
            raise StorageError(f"invalid blob key {key!r}")
        return self.root / key

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        new_dirs = [d for d in path.parents if d.is_relative_to(self.root) and not d.exists()]
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename, so a reader never sees half a file; fsync the file before the
        # rename and the directory after it, so once put() returns (and the job can be
        # Ready) the blob survives a power loss, as an S3 PUT's answer promises.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException as exc:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(exc, OSError):  # a full or failing disk: the job is tried again
                raise StorageError(f"could not write blob {key!r}: {exc}") from exc
            raise
        fsync_directory(path.parent)
        for directory in new_dirs:  # a new job's folder: its entry must last too
            fsync_directory(directory.parent)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise StorageError(f"blob {key!r} does not exist") from exc

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        if not is_valid_key(prefix + ".x"):  # the same rules as a key, without an extension
            raise StorageError(f"invalid blob prefix {prefix!r}")
        shutil.rmtree(self.root / prefix, ignore_errors=True)

    def url(self, key: str, base_url: str, ttl_seconds: int) -> str:
        expires, signature = self.signer.sign(key, ttl_seconds)
        query = urlencode({"exp": expires, "sig": signature})
        return f"{base_url.rstrip('/')}/files/{key}?{query}"
