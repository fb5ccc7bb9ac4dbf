"""Model resolution: registry names, local directories and repos in the Hugging Face cache."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fluxserve.errors import ModelLoadError
from fluxserve.specs import ModelKind
from fluxserve.weights import resolve_model
from tests.helpers import FLUXSERVE

REVISION = "0" * 40


def put_in_hf_cache(hf_home: Path, repo_id: str, model_dir: Path) -> None:
    """Lay ``model_dir`` out as the Hub's cache does: content-addressed blobs, a snapshot of
    symlinks, and refs/main naming the snapshot."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    for source in model_dir.rglob("*"):
        if not source.is_file():
            continue
        blob = repo / "blobs" / hashlib.sha256(source.read_bytes()).hexdigest()
        blob.parent.mkdir(exist_ok=True)
        shutil.copyfile(source, blob)
        link = repo / "snapshots" / REVISION / source.relative_to(model_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


@pytest.fixture
def hf_home(tmp_path, tiny_model_dir, monkeypatch):
    home = tmp_path / "hf"
    put_in_hf_cache(home, "acme/flux-tiny", tiny_model_dir)
    import huggingface_hub.constants

    # huggingface_hub reads the environment once, at import; its calls read this constant.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    return home


def test_repo_id_resolves_from_the_cache_offline(hf_home, tmp_path):
    model = resolve_model("acme/flux-tiny", tmp_path / "models")
    assert model.name == "acme/flux-tiny"
    assert model.spec.kind is ModelKind.TEST  # make-tiny's marker travels with the files
    assert (model.path / "model_index.json").exists()
    assert REVISION in str(model.path)


def test_generate_from_a_cached_repo_id(hf_home, tmp_path):
    output = tmp_path / "out.png"
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub")}
    env["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run(
        [FLUXSERVE, "generate", "x", "-o", str(output),
         "--model", "acme/flux-tiny", "--width", "256", "--height", "256", "--steps", "1"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert output.stat().st_size > 0
    listing = subprocess.run(
        [FLUXSERVE, "models", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert "acme/flux-tiny" in listing.stdout


def test_local_directory_without_model_index(tmp_path):
    with pytest.raises(ModelLoadError, match="not a diffusers-format model directory"):
        resolve_model(str(tmp_path), tmp_path / "models")


def test_registry_tiny_needs_building(tmp_path):
    model = resolve_model("tiny", tmp_path / "models")
    assert model.needs_build
    assert model.path == tmp_path / "models" / "tiny"


def test_device_and_dtype_policy():
    import torch

    from fluxserve.runtime.device import configure_threads, pick_device, pick_dtype

    assert pick_device("cpu").type == "cpu"
    assert pick_dtype(torch.device("cpu")) is torch.float32
    assert pick_dtype(torch.device("cuda")) is torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            pick_device("cuda")
    before = torch.get_num_threads()
    try:
        assert configure_threads(torch.device("cpu"), 1) == 1
    finally:
        torch.set_num_threads(before)
