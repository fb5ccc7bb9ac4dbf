"""Find a model's weights: registry name, Hugging Face repo id, or local directory.

Torch-free, so ``fluxserve serve`` can resolve (and download) weights with a progress bar
before it starts anything, and fail with one clear sentence when it cannot.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from fluxserve.errors import ModelLoadError
from fluxserve.specs import MODEL_SPECS, ModelSpec, infer_spec, spec_for_source

logger = logging.getLogger(__name__)

# Only the diffusers-format components: FLUX repos also hold 20+ GB single-file
# checkpoints at their root that the pipeline never reads.
DIFFUSERS_PATTERNS = [
    "model_index.json",
    "scheduler/*",
    "text_encoder/*",
    "text_encoder_2/*",
    "tokenizer/*",
    "tokenizer_2/*",
    "transformer/*",
    "vae/*",
]


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    spec: ModelSpec
    path: Path

    @property
    def needs_build(self) -> bool:
        """The tiny model is built on first use rather than downloaded."""
        return self.spec.builtin and not (self.path / "model_index.json").exists()


# A transformers classifier or language model: configs, tokenizer files, safetensors.
TRANSFORMERS_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


def download_snapshot(
    repo_id: str, *, allow_download: bool = True, patterns: list[str] | None = None
) -> Path:
    """The local snapshot of ``repo_id``, downloading it (with a progress bar) if needed."""
    patterns = patterns or DIFFUSERS_PATTERNS
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except LocalEntryNotFoundError:
        if not allow_download:
            raise ModelLoadError(
                f"The weights of {repo_id} are not in the local Hugging Face cache."
            ) from None
    logger.info("downloading %s from the Hugging Face Hub", repo_id)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except GatedRepoError:
        raise ModelLoadError(
            f"{repo_id} is gated: accept its licence on huggingface.co, run `hf auth login` "
            "on this machine, then start fluxserve again."
        ) from None
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"There is no Hugging Face repository named {repo_id} (or it is private)."
        ) from None
    except (LocalEntryNotFoundError, OSError):
        raise ModelLoadError(
            f"The weights of {repo_id} are not cached here and the Hugging Face Hub cannot be "
            "reached: connect this machine to the internet once, or copy the model's "
            "diffusers-format directory here and pass --model /path/to/it, or start with "
            "--model tiny-flux2 (or tiny, FLUX.1) to try the server without weights."
        ) from None


def resolve_model(
    ref: str, models_dir: Path, *, allow_download: bool = True, weights: bool = True
) -> ResolvedModel:
    """Turn a ``--model`` value into a name, a spec and a local diffusers directory.

    ``weights=False`` (an API-only replica) resolves the name and spec without fetching
    anything: the workers on the GPU hosts hold the weights.
    """
    if ref in MODEL_SPECS:
        spec = MODEL_SPECS[ref]
        if spec.builtin or not weights:
            return ResolvedModel(ref, spec, models_dir / ref)
        path = download_snapshot(spec.source, allow_download=allow_download)
        return ResolvedModel(ref, spec, path)
    local = Path(ref).expanduser()
    if local.is_dir():
        if not (local / "model_index.json").exists():
            raise ModelLoadError(
                f"{local} is not a diffusers-format model directory (it has no "
                "model_index.json); `fluxserve models make-tiny DIR` shows the layout."
            )
        name = local.resolve().name
        return ResolvedModel(name, infer_spec(name, local.resolve()), local.resolve())
    if ref.count("/") == 1 and not ref.startswith((".", "/")) and not weights:
        spec = spec_for_source(ref) or infer_spec(ref, None)
        return ResolvedModel(spec.name, spec, Path(ref))
    if ref.count("/") == 1 and not ref.startswith((".", "/")):
        path = download_snapshot(ref, allow_download=allow_download)
        spec = spec_for_source(ref) or infer_spec(ref, path)
        return ResolvedModel(spec.name, spec, path)
    raise ModelLoadError(
        f"Unknown model {ref!r}: use one of {', '.join(MODEL_SPECS)}, a Hugging Face repo "
        "id (owner/name), or a local diffusers-format directory."
    )


def component_fingerprint(directory: Path) -> str | None:
    """A digest of a pipeline component's files (config and weights); None if absent.

    Two models whose component (the VAE, a text encoder) has the same fingerprint hold the
    same bytes, so one loaded copy can serve both. A file in the Hugging Face cache is a
    link to a blob named by its content hash, which is used as is; any other file is
    hashed (once, at load, and only when several models are loaded).
    """
    if not directory.is_dir():
        return None
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode())
        target = path.resolve()
        if path.is_symlink() and target.parent.name == "blobs":
            digest.update(target.name.encode())
            continue
        with open(target, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def resolve_aux_model(ref: str, what: str, *, allow_download: bool = True) -> Path:
    """A helper model (a safety classifier, a prompt rewriter): a local directory or a
    Hugging Face repo id, downloaded into the usual cache if needed."""
    local = Path(ref).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ModelLoadError(f"{what} {local} is not a transformers model directory.")
        return local.resolve()
    if ref.count("/") == 1 and not ref.startswith((".", "/")):
        return download_snapshot(ref, allow_download=allow_download, patterns=TRANSFORMERS_PATTERNS)
    raise ModelLoadError(f"{what} {ref!r} is neither a directory nor a Hugging Face repo id.")
