"""The invisible watermark (issue 5): ``--watermark`` marks every output that passed its
check; ``read_watermark`` finds the mark again in the served file.

The tiny model's outputs are 256x256 (DWT-DCT needs room for 48 bits) with one step.
"""

from __future__ import annotations

import importlib.util
import io
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageFilter

from fluxserve.api.app import create_app
from fluxserve.bootstrap import build_services
from fluxserve.config import Settings
from fluxserve.errors import ConfigurationError
from fluxserve.runtime.watermark import MARK, read_watermark, watermarker
from tests.helpers import SMALL, poll_result, wait_ready
from tests.tiny_aux import make_image_checker

FAST = {**SMALL, "steps": 1}


def generate(client: TestClient, **body) -> dict:
    response = client.post("/v1/flux-dev", json={"prompt": "a red fox", **FAST, **body})
    assert response.status_code == 200, response.text
    return poll_result(client, response.json()["id"])


def served_image(client: TestClient, body: dict) -> Image.Image:
    assert body["status"] == "Ready", body
    response = client.get(body["result"]["sample"])
    assert response.status_code == 200
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def picture(seed: int, size: tuple[int, int] = (256, 256)) -> Image.Image:
    """A random picture with some texture (upscaled, blurred noise). DWT-DCT reads its mark
    back poorly from very smooth pictures of 256x256; these are not that smooth."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (size[1] // 4, size[0] // 4, 3), dtype=np.uint8))
    return small.resize(size, Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(1))


@pytest.fixture(scope="module")
def marking_client(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    settings = Settings(
        model=[str(tiny_model_dir)],
        data_dir=tmp_path_factory.mktemp("watermark") / "data",
        worker_mode="thread",
        watermark=True,
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


# -- through the server ---------------------------------------------------------------------------


# JPEG keeps the mark because watermarked outputs are saved with full chroma (4:4:4).
@pytest.mark.parametrize("output_format", ["png", "jpeg"])
def test_outputs_carry_the_mark(marking_client, output_format):
    body = generate(marking_client, output_format=output_format, seed=0)
    image = served_image(marking_client, body)
    assert image.format == output_format.upper()
    assert image.size == (256, 256)
    assert read_watermark(image) == MARK


def test_every_image_of_a_batch_carries_the_mark(marking_client):
    response = marking_client.post(
        "/v1/images/generations",
        json={"prompt": "two owls", "n": 2, "size": "256x256", "steps": 1},
    )
    assert response.status_code == 200, response.text
    urls = [item["url"] for item in response.json()["data"]]
    assert len(urls) == 2
    for url in urls:
        image = Image.open(io.BytesIO(marking_client.get(url).content))
        assert read_watermark(image) == MARK


def test_outputs_are_unmarked_without_the_setting(client):
    image = served_image(client, generate(client, output_format="png", seed=0))
    assert read_watermark(image) != MARK


def test_a_blocked_output_is_not_marked(tiny_model_dir, tmp_path):
    """A blocked output is stored as a black image, and stays black: no mark on it."""
    checker = make_image_checker(tmp_path / "checker", unsafe_bias=20.0)  # blocks everything
    settings = Settings(
        model=[str(tiny_model_dir)],
        data_dir=tmp_path / "data",
        worker_mode="thread",
        watermark=True,
        image_checker=str(checker),
    )
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        body = generate(client, output_format="png")
        assert body["status"] == "Content Moderated", body
        services = client.app.state.services
        (key,) = services.jobs.get(body["id"]).result_keys
        stored = Image.open(io.BytesIO(services.storage.get(key)))
    assert stored.size == (256, 256)
    assert stored.convert("RGB").getextrema() == ((0, 0), (0, 0), (0, 0))
    # Marked, the same black image would not be black any more.
    assert watermarker()(Image.new("RGB", (256, 256))).getextrema() != ((0, 0),) * 3


# -- units ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(256, 256), (512, 384)])
def test_round_trip(size):
    image = picture(1, size)
    assert read_watermark(image) != MARK
    marked = watermarker()(image)
    assert marked.size == image.size
    assert marked.mode == "RGB"
    assert read_watermark(marked) == MARK
    # The same picture: the mark moves pixels by a few levels on average (swapped colour
    # channels, or values wrapped around, would move them by tens).
    difference = np.abs(np.asarray(marked, dtype=int) - np.asarray(image, dtype=int))
    assert 0 < difference.mean() < 8


def test_mark_survives_png(tmp_path):
    path = tmp_path / "marked.png"
    watermarker()(picture(2)).save(path)
    assert read_watermark(Image.open(path)) == MARK


def test_mark_of_an_rgba_image():
    rgba = picture(3).convert("RGBA")
    assert read_watermark(watermarker()(rgba)) == MARK


def test_watermarker_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "imwatermark", None)  # import now raises ImportError
    with pytest.raises(ConfigurationError, match=r"pip install 'fluxserve\[watermark\]'"):
        watermarker()


def test_build_services_refuses_watermark_without_the_package(
    monkeypatch, tiny_model_dir, tmp_path
):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "imwatermark" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr("fluxserve.bootstrap.importlib.util.find_spec", find_spec)
    settings = Settings(
        model=[str(tiny_model_dir)], data_dir=tmp_path / "data", worker_mode="thread"
    )
    services = build_services(settings)  # without --watermark the package is not needed
    services.store.close()

    marked = settings.model_copy(update={"watermark": True})
    with pytest.raises(ConfigurationError) as caught:
        build_services(marked)
    assert str(caught.value) == (
        "--watermark needs the invisible-watermark package: pip install 'fluxserve[watermark]'"
    )


def test_build_services_accepts_watermark_with_the_package(tiny_model_dir, tmp_path):
    settings = Settings(
        model=[str(tiny_model_dir)], data_dir=tmp_path / "data", worker_mode="thread",
        watermark=True,
    )  # fmt: skip
    services = build_services(settings)
    services.store.close()
