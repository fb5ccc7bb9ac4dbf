"""The console script: generate, models, make-tiny, settings from flags and environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fluxserve.cli.main import build_parser, settings_from
from fluxserve.runtime.postprocess import read_metadata
from tests.helpers import FLUXSERVE


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([FLUXSERVE, *args], capture_output=True, text=True, timeout=300, env=env)


def test_generate_writes_image_with_metadata_and_is_deterministic(tmp_path, tiny_model_dir):
    outputs = [tmp_path / "a.png", tmp_path / "b.png"]
    for output in outputs:
        result = run(
            "generate", "a lighthouse", "-o", str(output), "--model", str(tiny_model_dir),
            "--width", "256", "--height", "256", "--steps", "2", "--seed", "99",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "seed 99" in result.stdout
    assert outputs[0].read_bytes() == outputs[1].read_bytes()
    meta = read_metadata(outputs[0].read_bytes())
    assert meta["prompt"] == "a lighthouse"
    assert meta["steps"] == 2


def test_generate_without_prompt_metadata(tmp_path, tiny_model_dir):
    output = tmp_path / "a.webp"
    result = run(
        "generate", "secret prompt", "-o", str(output), "--model", str(tiny_model_dir),
        "--width", "256", "--height", "256", "--steps", "1", "--no-metadata-prompt",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    meta = read_metadata(output.read_bytes())
    assert "prompt" not in meta
    assert meta["model"] == "tiny"


def test_missing_weights_offline_is_one_clear_sentence(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = run("generate", "x", "-o", str(tmp_path / "x.png"), "--model", "flux-schnell", env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "black-forest-labs/FLUX.1-schnell" in result.stderr
    assert "--model tiny" in result.stderr


def test_unknown_model_name(tmp_path):
    result = run("generate", "x", "-o", str(tmp_path / "x.png"), "--model", "flux-ultra")
    assert result.returncode == 1
    assert "Unknown model 'flux-ultra'" in result.stderr


def test_make_tiny_then_models_lists_it(tmp_path):
    target = tmp_path / "tiny-copy"
    result = run("models", "make-tiny", str(target))
    assert result.returncode == 0, result.stderr
    assert (target / "model_index.json").exists()
    assert (target / "transformer" / "diffusion_pytorch_model.safetensors").exists()
    listing = run("models", "--data-dir", str(tmp_path / "data"))
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line for line in listing.stdout.splitlines()[1:] if line.strip()}
    assert {"flux-schnell", "flux-dev", "tiny", "flux2-klein-4b", "flux2-dev"} <= set(rows)
    assert "LICENCE" in listing.stdout.splitlines()[0]
    assert "apache-2.0" in rows["flux2-klein-4b"]
    assert "flux-2-dev-non-commercial" in rows["flux2-dev"]


def test_make_tiny_writes_the_flux2_variants(tmp_path):
    import json

    for variant, pipeline in (("tiny-flux2", "Flux2KleinPipeline"),
                              ("tiny-flux2-dev", "Flux2Pipeline")):  # fmt: skip
        target = tmp_path / variant
        result = run("models", "make-tiny", str(target), "--variant", variant)
        assert result.returncode == 0, result.stderr
        index = json.loads((target / "model_index.json").read_text())
        assert index["_class_name"] == pipeline
        assert (target / "tokenizer" / "tokenizer.json").exists()  # built offline


def test_make_tiny_refuses_non_empty_dir(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = run("models", "make-tiny", str(tmp_path))
    assert result.returncode == 1
    assert "not empty" in result.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_flags_override_environment(monkeypatch):
    monkeypatch.setenv("FLUXSERVE_PORT", "9000")
    monkeypatch.setenv("FLUXSERVE_MODEL", "flux-dev,tiny")
    args = build_parser().parse_args(["serve", "--host", "0.0.0.0"])
    settings = settings_from(args)
    assert (settings.host, settings.port, settings.model) == ("0.0.0.0", 9000, ["flux-dev", "tiny"])
    args = build_parser().parse_args(["serve", "--port", "9100", "--model", "tiny"])
    settings = settings_from(args)
    assert (settings.port, settings.model) == (9100, ["tiny"])


def test_bad_flag_value_is_reported_not_raised(tmp_path):
    result = run("serve", "--port", "99999", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert "--port" in result.stderr
    assert "Traceback" not in result.stderr


def test_second_server_on_same_data_dir_is_refused(tmp_path):
    from fluxserve.bootstrap import lock_data_dir
    from fluxserve.config import Settings

    held = lock_data_dir(Settings(data_dir=tmp_path))
    try:
        result = run("serve", "--model", "tiny", "--data-dir", str(tmp_path), "--port", "0")
        assert result.returncode == 1
        assert "Another fluxserve server is using" in result.stderr
    finally:
        held.close()


@pytest.mark.parametrize(
    "module",
    [
        "fluxserve.api.app",
        "fluxserve.jobs.service",
        "fluxserve.store.sqlite",
        "fluxserve.storage.local",
        "fluxserve.bootstrap",
        "fluxserve.cli.main",
    ],
)
def test_api_layers_import_without_torch(module):
    code = (
        f"import sys, {module}; "
        "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alias_to_unloaded_model_is_one_sentence(tmp_path, tiny_model_dir):
    result = run(
        "serve", "--model", str(tiny_model_dir), "--alias", "flux-pro=flux-dev",
        "--data-dir", str(tmp_path), "--port", "0",
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "--alias flux-pro=flux-dev points at a model that is not loaded" in result.stderr


def test_serve_without_weights_offline_is_one_sentence(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = run("serve", "--data-dir", str(tmp_path / "data"), "--port", "0", env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "black-forest-labs/FLUX.2-klein-4B" in result.stderr  # the default model


def test_readme_documents_every_setting():
    from fluxserve.config import Settings

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name in Settings.model_fields:
        assert f"`FLUXSERVE_{name.upper()}`" in readme, name
        assert f"`--{name.replace('_', '-')}" in readme, name


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--log-level", "verbose"], {}, "--log-level"),
        ([], {"FLUXSERVE_MODEL": ","}, "--model"),
    ],
)
def test_bad_settings_are_reported(tmp_path, args, env, message):
    result = run("serve", "--data-dir", str(tmp_path), *args, env={**os.environ, **env})
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("seed", ["-5", str(2**64)])
def test_generate_seed_out_of_range(tmp_path, tiny_model_dir, seed):
    result = run(
        "generate", "x", "-o", str(tmp_path / "x.png"), "--model", str(tiny_model_dir),
        "--seed", seed,
    )  # fmt: skip
    assert result.returncode == 1
    assert "--seed must be 0 to" in result.stderr


def test_bad_tls_files_are_one_sentence(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not a certificate")
    key.write_text("not a key")
    result = run(
        "serve", "--data-dir", str(tmp_path), "--tls-cert", str(cert), "--tls-key", str(key)
    )
    assert result.returncode == 2
    assert "not a PEM certificate chain" in result.stderr
    assert "Traceback" not in result.stderr
    lonely = run("serve", "--data-dir", str(tmp_path), "--tls-cert", str(cert))
    assert lonely.returncode == 2
    assert "go together" in lonely.stderr
