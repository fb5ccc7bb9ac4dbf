"""The disk cache of LoRA files on a worker: fetched once, kept in a bounded LRU. Torch-free.

A source (lora/sources.py) is downloaded at most once per host however many requests ask
for it at once: a lock file per source serialises the fetch, across processes. Each file
is checked to be a whole safetensors file (its header read, its tensors inside the file)
and its SHA-256 recorded; a cached file is verified against that hash before it is used
again (once per change of its size or time). The least recently used files are evicted
past ``--lora-cache-gb``; an evicted LoRA is fetched again on demand.

Every failure is a LoraError naming the LoRA, with a code the job ends with.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from fluxserve.addresses import UrlPolicy
from fluxserve.errors import InvalidRequest, LoraError
from fluxserve.lora.sources import describe

logger = logging.getLogger(__name__)

HEADER_LIMIT = 100 * 1024 * 1024  # a safetensors header is JSON; this is already huge


@dataclass(frozen=True)
class LocalLora:
    """A fetched LoRA: its file, the digest that names it on the GPU, and its source."""

    path: Path
    digest: str  # sha256 of the file's bytes
    source: str


@dataclass
class LoraCounters:
    hits: int = 0
    misses: int = 0
    downloads: int = 0
    download_seconds: float = 0.0


def check_safetensors(path: Path, name: str) -> None:
    """A whole safetensors file: the header parses and every tensor lies inside the file.
    (Only safetensors are read, never pickle: nothing in the file can run.)"""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > min(HEADER_LIMIT, size - 8):
                raise ValueError("its header is longer than the file")
            header = json.loads(handle.read(length))
        body = size - 8 - length
        for key, entry in header.items():
            if key == "__metadata__":
                continue
            begin, end = entry["data_offsets"]
            if not 0 <= begin <= end <= body:
                raise ValueError(f"tensor {key} lies past the end of the file (truncated?)")
    except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise LoraError(
            "lora_invalid", f"LoRA {name} is not a valid safetensors file: {exc}"
        ) from None


def file_digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class LoraFiles:
    """Fetch LoRA sources into ``directory``, at most ``max_bytes`` of them."""

    def __init__(self, directory: Path, max_bytes: int, max_lora_bytes: int,
                 urls: UrlPolicy, timeout: float = 60.0) -> None:  # fmt: skip
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.max_lora_bytes = max_lora_bytes
        self.urls = urls
        self.timeout = timeout
        self.counters = LoraCounters()
        self._verified: dict[Path, tuple[int, int]] = {}  # path -> (size, mtime) checked
        self._local_digests: dict[Path, tuple[tuple[int, int], str]] = {}  # --lora-dir
        self._lock = threading.Lock()

    def fetch(self, source: str) -> LocalLora:
        """The local file of ``source``, downloading it if it is not cached."""
        if source.startswith("file:"):
            path = Path(source.removeprefix("file:"))
            if not path.is_file():
                raise LoraError("lora_unavailable", f"LoRA {path} is not in --lora-dir any more")
            self._check_size(path, describe(source))
            check_safetensors(path, describe(source))
            return LocalLora(path, self._file_digest(path), source)
        self.directory.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha256(source.encode()).hexdigest()[:32]
        path, meta = self.directory / f"{key}.safetensors", self.directory / f"{key}.json"
        with self._locked(key):
            cached = self._cached(path, meta, source)
            if cached is not None:
                self.counters.hits += 1
                return cached
            self.counters.misses += 1
            started = time.monotonic()
            self._download(source, path)  # only a whole safetensors file gets there
            digest = file_digest(path)
            meta.write_text(json.dumps({"source": source, "sha256": digest}))
            self._remember(path)
            self.counters.downloads += 1
            self.counters.download_seconds += time.monotonic() - started
            logger.info("LoRA %s downloaded (%d bytes)", describe(source), path.stat().st_size)
        self._evict(keep=path)
        return LocalLora(path, digest, source)

    def _cached(self, path: Path, meta: Path, source: str) -> LocalLora | None:
        """The cached file of ``source`` if it is there and its hash still holds."""
        if not (path.is_file() and meta.is_file()):
            return None
        expected = json.loads(meta.read_text()).get("sha256", "")
        stat = path.stat()
        if self._verified.get(path) != (stat.st_size, stat.st_mtime_ns):
            if file_digest(path) != expected:  # changed on disk: fetch it again
                logger.warning("cached LoRA %s failed its hash check; fetching it again",
                               describe(source))  # fmt: skip
                path.unlink()
                return None
            self._remember(path)
        os.utime(path)  # the LRU's clock
        return LocalLora(path, expected, source)

    def _file_digest(self, path: Path) -> str:
        """A --lora-dir file's digest, hashed again only when the file changes."""
        stat = path.stat()
        seen = (stat.st_size, stat.st_mtime_ns)
        known = self._local_digests.get(path)
        if known is None or known[0] != seen:
            known = (seen, file_digest(path))
            self._local_digests[path] = known
        return known[1]

    def _remember(self, path: Path) -> None:
        stat = path.stat()
        self._verified[path] = (stat.st_size, stat.st_mtime_ns)

    def _check_size(self, path: Path, name: str) -> None:
        if path.stat().st_size > self.max_lora_bytes:
            raise LoraError(
                "lora_too_large", f"LoRA {name} is larger than {self.max_lora_bytes} bytes"
            )

    def _download(self, source: str, path: Path) -> None:
        name = describe(source)
        handle, staging = tempfile.mkstemp(dir=self.directory, suffix=".part")
        try:
            with os.fdopen(handle, "wb") as sink:
                if source.startswith("hf:"):
                    self._from_hub(source.removeprefix("hf:"), Path(staging))
                else:
                    self._from_url(source, sink)
            self._check_size(Path(staging), name)
            check_safetensors(Path(staging), name)
            os.replace(staging, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging)

    def _from_url(self, url: str, sink) -> None:
        from fluxserve.images.inputs import ImageLimits, fetch_url

        limits = ImageLimits(max_bytes=self.max_lora_bytes, fetch_timeout=self.timeout)
        try:
            fetch_url(url, "lora", limits, self.urls, sink)
        except InvalidRequest as exc:  # refused address, HTTP error, too large
            code = "lora_too_large" if "larger than" in exc.message else "lora_unavailable"
            reason = exc.message.removeprefix("lora").lstrip(": ")
            raise LoraError(code, f"LoRA {url}: {reason}") from None

    def _from_hub(self, path: str, target: Path) -> None:
        from huggingface_hub import HfApi, hf_hub_download

        repo, _, filename = path.partition(":")
        try:
            if not filename:
                files = [f for f in HfApi().list_repo_files(repo) if f.endswith(".safetensors")]
                if len(files) != 1:
                    raise LoraError(
                        "lora_unavailable",
                        f"LoRA {repo} holds {len(files)} .safetensors files; name one as "
                        f"{repo}:FILE.safetensors",
                    )
                filename = files[0]
            local = hf_hub_download(repo, filename, cache_dir=self.directory / "hub")
        except LoraError:
            raise
        except Exception as exc:  # offline, missing, gated: the job says which LoRA
            raise LoraError(
                "lora_unavailable", f"LoRA {path} could not be fetched ({type(exc).__name__})"
            ) from None
        shutil.copyfile(local, target)

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        """One fetch of a source at a time, across this host's processes."""
        with self._lock, open(self.directory / f"{key}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _evict(self, keep: Path) -> None:
        """Drop the least recently used files past ``max_bytes`` (never ``keep``)."""
        files = sorted(self.directory.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for path in files:
            if total <= self.max_bytes:
                break
            if path == keep:
                continue
            total -= path.stat().st_size
            path.unlink(missing_ok=True)
            path.with_suffix(".json").unlink(missing_ok=True)
            self._verified.pop(path, None)
            logger.info("LoRA cache: evicted %s", path.name)
