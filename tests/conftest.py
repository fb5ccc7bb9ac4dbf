"""Shared fixtures: a tiny real FLUX model, settings in a temp dir, the app with a worker."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fluxserve.api.app import create_app
from fluxserve.config import Settings
from tests.helpers import idle_app, wait_ready

# Offline, whatever the machine: tests never reach the Hugging Face Hub.
os.environ["HF_HUB_OFFLINE"] = "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """GPU-only tests are skipped, with the reason shown (``-ra``), where CUDA is absent."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is visible on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _root_logging() -> Iterator[None]:
    """Commands run in-process (serve, bench) point the root logger at the test's captured
    stderr, closed after the test: later tests' threads get the handlers they had."""
    import logging

    handlers, level = logging.root.handlers[:], logging.root.level
    yield
    logging.root.handlers[:] = handlers
    logging.root.setLevel(level)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FLUXSERVE_"):
            monkeypatch.delenv(name)


# PostgreSQL for the cluster tests: CI runs it at 127.0.0.1:5432 (trust auth). These
# tests fail, never skip, when it is not there: FLUXSERVE_TEST_POSTGRES overrides the URL.
POSTGRES_ADMIN_URL = os.environ.get(
    "FLUXSERVE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (dropped afterwards)."""
    import uuid

    import psycopg

    name = f"fluxserve_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} ({exc}); start it with "
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
        )
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        finally:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
            admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


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


@pytest.fixture(scope="module")
def runner(tiny_model_dir: Path):
    """The tiny model loaded in a real FluxRunner, once per test module."""
    from fluxserve.runtime.diffusers_runner import FluxRunner
    from fluxserve.weights import resolve_model

    runner = FluxRunner([resolve_model(str(tiny_model_dir), tiny_model_dir.parent)])
    runner.load()
    return runner


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


def running_app(settings: Settings) -> Iterator[TestClient]:
    """For a fixture to ``yield from``: the app with its lifespan running, once ready."""
    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client)
        yield test_client


@pytest.fixture
def image_client(image_settings: Settings) -> Iterator[TestClient]:
    """The app serving tiny, tiny-kontext and tiny-fill."""
    yield from running_app(image_settings)


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path) -> Settings:
    return Settings(
        model=[str(tiny_model_dir)],
        data_dir=tmp_path / "data",
        worker_mode="thread",
    )


@pytest.fixture
def idle_client(settings: Settings) -> Iterator[TestClient]:
    """The app without its lifespan: no worker starts, so submitted jobs stay queued."""
    yield from idle_app(settings)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The app with its lifespan running: a thread worker serving the tiny model."""
    yield from running_app(settings)


@pytest.fixture
def idle_image_client(image_settings: Settings) -> Iterator[TestClient]:
    """The image app (tiny, tiny-kontext, tiny-fill) without its lifespan: no worker starts,
    so submitted jobs stay queued."""
    yield from idle_app(image_settings)


@pytest.fixture(scope="session")
def tiny_flux2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FLUX.2 [klein]'s structure (Qwen3 text encoder, no guidance embedding)."""
    from fluxserve.runtime.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("models") / "tiny-flux2", "tiny-flux2")


@pytest.fixture(scope="session")
def tiny_flux2_dev_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FLUX.2 [dev]'s structure (Mistral3 text encoder, guidance embedding)."""
    from fluxserve.runtime.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("models") / "tiny-flux2-dev", "tiny-flux2-dev")


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory, tiny_model_dir, tiny_flux2_dir) -> Path:
    """Test LoRAs: a.safetensors and b.safetensors for tiny (FLUX.1), k.safetensors for
    tiny-flux2 (FLUX.2), and broken files (truncated, a pickle)."""
    from tests.loras import make_lora

    directory = tmp_path_factory.mktemp("loras")
    make_lora(tiny_model_dir, directory / "a.safetensors", seed=1)
    make_lora(tiny_model_dir, directory / "b.safetensors", seed=2, rank=8,
              modules=("to_q", "to_out.0"))  # fmt: skip
    make_lora(tiny_flux2_dir, directory / "k.safetensors", seed=3,
              modules=("to_q", "to_k", "to_v", "to_out.0"))  # fmt: skip
    make_lora(tiny_flux2_dir, directory / "k2.safetensors", seed=5, modules=("to_out.0",))
    make_lora(tiny_model_dir, directory / "big.safetensors", seed=4, rank=64)  # ~100 KB
    whole = (directory / "a.safetensors").read_bytes()
    (directory / "truncated.safetensors").write_bytes(whole[: len(whole) // 2])
    (directory / "model.ckpt").write_bytes(b"\x80\x04not loaded")
    return directory


@pytest.fixture
def sqlite_store(tmp_path: Path):
    """A fresh embedded job store, migrated."""
    from fluxserve.store.sqlite import SqliteJobStore

    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    yield store
    store.close()


@pytest.fixture(params=["sqlite", "postgres"])
def job_store(request: pytest.FixtureRequest, tmp_path: Path):
    """A fresh job store of each kind: SQLite, then PostgreSQL (its own database)."""
    if request.param == "sqlite":
        from fluxserve.store.sqlite import SqliteJobStore

        store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    else:
        from fluxserve.store.postgres import PostgresJobStore

        store = PostgresJobStore(request.getfixturevalue("pg_url"))
    yield store
    store.close()
