"""Live previews: the latent-to-colour map fitted per VAE, the runner's previews, the job's
``preview`` in BFL's get_result while it runs, and none for a job that did not ask."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
import sqlalchemy as sa
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image

from fluxserve.domain import GenerationRequest, Job, JobStatus, Task
from fluxserve.runtime.base import GenerationInputs
from fluxserve.runtime.previews import decode_tokens, denoised, fit_previewer
from fluxserve.weights import resolve_model
from tests.helpers import poll_result


def load_runner(model_dir):
    from fluxserve.runtime.diffusers_runner import FluxRunner

    runner = FluxRunner([resolve_model(str(model_dir), model_dir.parent)])
    runner.load()
    return runner


@pytest.fixture(scope="module")
def flux1_runner(tiny_model_dir):
    return load_runner(tiny_model_dir)


@pytest.fixture(scope="module")
def flux2_runner(tiny_flux2_dir):
    return load_runner(tiny_flux2_dir)


@pytest.fixture(params=["flux1", "flux2"])
def any_runner(request):
    return request.getfixturevalue(f"{request.param}_runner")


def request_for(runner, **fields) -> GenerationRequest:
    values = {"model": runner.model_names[0], "prompt": "a red fox", "width": 256,
              "height": 256, "steps": 8, "guidance": 3.5, "seed": 3, **fields}  # fmt: skip
    return GenerationRequest(**values)


def final_latents_and_image(runner, width: int = 256, height: int = 256):
    """A real generation on the runner's pipeline: its last latents and decoded image."""
    pipeline = runner.pipelines[runner.model_names[0]]
    spec = runner.models[runner.model_names[0]].spec
    from fluxserve.runtime.diffusers_runner import loop_arguments

    caught = {}

    def keep(_pipe, _step, _timestep, kwargs):
        caught["latents"] = kwargs["latents"].clone()
        return kwargs

    request = request_for(runner, width=width, height=height)
    with torch.inference_mode():
        output = pipeline(
            prompt=request.prompt, **loop_arguments(request, spec), output_type="pt",
            generator=torch.Generator("cpu").manual_seed(request.seed),
            callback_on_step_end=keep,
        )  # fmt: skip
    return pipeline, caught["latents"], output.images


def test_decoding_tokens_matches_the_pipelines_own_decode(any_runner):
    """The fit's targets are decoded exactly as the pipeline decodes its result (the same
    unpacking and normalisation), for FLUX.1 and FLUX.2 alike."""
    pipeline, latents, images = final_latents_and_image(any_runner, 256, 128)
    with torch.inference_mode():
        decoded = decode_tokens(pipeline, latents, 256, 128)
    torch.testing.assert_close(decoded, images.float(), atol=1e-4, rtol=0)


def test_the_preview_follows_the_decoded_image(any_runner):
    """Fitted on synthetic images only, the map turns a generation's real latents into a
    picture an eighth of the size that correlates with what the VAE decodes."""
    pipeline, latents, images = final_latents_and_image(any_runner, 256, 128)
    previewer = fit_previewer(pipeline)
    assert previewer is not None
    preview = previewer.image(latents[0], 256, 128)
    assert preview.size == (32, 16)
    shown = np.asarray(preview, dtype=np.float64) / 255
    decoded = F.avg_pool2d(images[:1].float(), 8)[0].permute(1, 2, 0).numpy()
    correlation = np.corrcoef(shown.ravel(), decoded.ravel())[0, 1]
    # Random weights (the tiny VAEs) make a hard case; real VAEs decode far more linearly.
    assert correlation > 0.2, correlation
    jpeg = Image.open(io.BytesIO(previewer.jpeg(latents[0], 256, 128)))
    assert (jpeg.format, jpeg.size) == ("JPEG", (32, 16))


def test_a_preview_shows_the_loops_estimate_of_the_final_latents(any_runner):
    """Mid-loop latents are mostly noise; the estimate read off two steps (x0 = x_t -
    sigma_t * velocity) is already near the final latents."""
    pipeline = any_runner.pipelines[any_runner.model_names[0]]
    spec = any_runner.models[any_runner.model_names[0]].spec
    from fluxserve.runtime.diffusers_runner import loop_arguments

    steps: list[tuple[torch.Tensor, torch.Tensor]] = []

    def keep(pipe, _step, _timestep, kwargs):
        previous = steps[-1][0] if steps else None
        steps.append((kwargs["latents"].clone(), denoised(pipe, kwargs["latents"], previous)))
        return kwargs

    request = request_for(any_runner)
    with torch.inference_mode():
        pipeline(
            prompt=request.prompt, **loop_arguments(request, spec), output_type="latent",
            generator=torch.Generator("cpu").manual_seed(request.seed),
            callback_on_step_end=keep,
        )  # fmt: skip
    final = steps[-1][0]
    raw, estimate = steps[1]
    assert (estimate - final).norm() < 0.5 * (raw - final).norm()
    torch.testing.assert_close(steps[-1][1], final)  # sigma 0 at the end: the latents


def test_editing_and_image_to_image_loops_have_previews(flux1_runner, flux2_runner):
    start = Image.new("RGB", (256, 256), (200, 40, 40))
    for runner, task in ((flux1_runner, Task.IMAGE_TO_IMAGE), (flux2_runner, Task.EDIT)):
        seen = []

        def on_step(done, total, previews=None, seen=seen):
            if previews is not None:
                seen.append(previews)

        strength = {"strength": 0.6} if task is Task.IMAGE_TO_IMAGE else {}
        request = request_for(runner, task=task, previews=True, **strength)
        runner.generate(request, GenerationInputs(images=[start]), on_step, lambda: False)
        assert seen, task
        assert Image.open(io.BytesIO(seen[0][0])).size == (32, 32)


def test_the_runner_hands_previews_only_to_a_loop_that_asked(any_runner):
    seen: list[tuple[int, int, list]] = []

    def on_step(done, total, previews=None):
        if previews is not None:
            seen.append((done, total, previews))

    any_runner.generate(request_for(any_runner, previews=True), GenerationInputs(), on_step,
                        lambda: False)  # fmt: skip
    assert seen, "no preview at any step"
    for done, total, previews in seen:
        assert 0 < done < total
        (jpeg,) = previews
        assert Image.open(io.BytesIO(jpeg)).size == (32, 32)

    def two_arguments(done, total):  # as every callback before previews
        assert 0 < done <= total

    any_runner.generate(request_for(any_runner), GenerationInputs(), two_arguments,
                        lambda: False)  # fmt: skip


def test_a_batch_previews_each_job_that_asked(flux1_runner):
    seen = []

    def on_step(done, total, previews=None):
        if previews is not None:
            seen.append(previews)

    requests = [request_for(flux1_runner, seed=1, previews=True), request_for(flux1_runner, seed=2)]
    flux1_runner.generate_batch(requests, on_step, lambda: False)
    assert seen
    for asked, not_asked in seen:
        assert Image.open(io.BytesIO(asked)).size == (32, 32)
        assert not_asked is None


def test_previews_round_trip_and_stay_out_of_the_batch_key():
    request = GenerationRequest(model="tiny", prompt="p", width=256, height=256, steps=4,
                                guidance=3.0, seed=1)  # fmt: skip
    asked = GenerationRequest.from_dict({**request.to_dict(), "previews": True})
    assert asked.previews is True
    assert GenerationRequest.from_dict(asked.to_dict()) == asked
    old_row = request.to_dict()
    del old_row["previews"]  # a job stored before previews existed
    assert GenerationRequest.from_dict(old_row).previews is False
    assert asked.batch_key == request.batch_key  # a watched job still shares a batch


def test_the_store_keeps_the_latest_preview_while_running(job_store):
    request = GenerationRequest(model="tiny", prompt="p", width=256, height=256, steps=4,
                                guidance=3.0, seed=1, previews=True)  # fmt: skip
    job_store.create(Job(id="a", request=request))
    job = job_store.claim("w", ["tiny"], 30)
    first = {"image": "data:image/jpeg;base64,AAAA", "step": 1, "steps": 4}
    assert job_store.set_progress("a", job.attempt, 0.25, first)
    assert job_store.set_progress("a", job.attempt, 0.5)  # progress alone keeps it
    assert job_store.get("a").preview == first
    assert not job_store.set_progress("a", job.attempt + 1, 0.75, {**first, "step": 3})
    assert job_store.get("a").preview == first  # a stale attempt writes nothing
    assert job_store.complete("a", job.attempt, ["k.jpeg"])
    assert job_store.get("a").preview is None


def test_a_job_that_asks_shows_previews_while_running_and_none_after(client):
    """previews: true on the playground's route: get_result has a preview while the job
    runs (768x768, 50 steps: about two seconds on the tiny model); a job that did not ask
    never has one, and neither has any job once it ended."""
    watched = client.post(
        "/v1/tiny", json={"prompt": "a fox", "width": 768, "height": 768, "steps": 50,
                          "seed": 5, "previews": True},
    ).json()["id"]  # fmt: skip
    plain = client.post(
        "/v1/tiny", json={"prompt": "a fox", "width": 768, "height": 768, "steps": 50, "seed": 6}
    ).json()["id"]
    preview = None
    deadline = time.monotonic() + 60
    while preview is None and time.monotonic() < deadline:
        body = client.get("/v1/get_result", params={"id": watched}).json()
        if body["status"] != "Pending":
            break
        preview = body["preview"]
        time.sleep(0.005)
    assert preview is not None, "no preview while the job ran"
    assert set(preview) == {"image", "step", "steps"}
    assert preview["steps"] == 50
    assert 0 < preview["step"] < 50
    prefix = "data:image/jpeg;base64,"
    assert preview["image"].startswith(prefix)
    image = Image.open(io.BytesIO(base64.b64decode(preview["image"][len(prefix) :])))
    assert (image.format, image.size) == ("JPEG", (96, 96))

    assert poll_result(client, watched)["preview"] is None
    deadline = time.monotonic() + 60
    body = client.get("/v1/get_result", params={"id": plain}).json()
    while body["status"] == "Pending" and time.monotonic() < deadline:
        assert body["preview"] is None
        time.sleep(0.005)
        body = client.get("/v1/get_result", params={"id": plain}).json()
    assert body["status"] == "Ready"
    assert body["preview"] is None

    from fluxserve.store.tables import jobs

    with client.app.state.services.store.engine.connect() as conn:
        rows = conn.execute(sa.select(jobs.c.status, jobs.c.preview)).all()
    assert rows == [(JobStatus.SUCCEEDED.value, None)] * 2  # cleared: rows stay small
