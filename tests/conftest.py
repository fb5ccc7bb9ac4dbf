"""Shared fixtures: a tiny real FLUX model, settings in a temp dir, the app with a worker."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fluxserve.api.app import create_app
from fluxserve.config import Settings
from tests.helpers import wait_ready

# Offline, whatever the machine: tests never reach the Hugging Face Hub.
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FLUXSERVE_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model written once per session, loaded like any diffusers checkpoint."""
    from fluxserve.runtime.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_kontext_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fluxserve.runtime.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("models") / "tiny-kontext", "tiny-kontext")


@pytest.fixture(scope="session")
def tiny_fill_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fluxserve.runtime.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("models") / "tiny-fill", "tiny-fill")


@pytest.fixture
def image_settings(
    tmp_path: Path, tiny_model_dir: Path, tiny_kontext_dir: Path, tiny_fill_dir: Path
) -> Settings:
    """Three tiny models in one worker: text-to-image, Kontext and Fill."""
    return Settings(
        model=[str(tiny_model_dir), str(tiny_kontext_dir), str(tiny_fill_dir)],
        data_dir=tmp_path / "data",
        worker_mode="thread",
    )


@pytest.fixture
def image_client(image_settings: Settings) -> Iterator[TestClient]:
    """The app serving tiny, tiny-kontext and tiny-fill."""
    with TestClient(create_app(image_settings)) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path) -> Settings:
    return Settings(
        model=[str(tiny_model_dir)],
        data_dir=tmp_path / "data",
        worker_mode="thread",
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The app with its lifespan running: a thread worker serving the tiny model."""
    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client)
        yield test_client
