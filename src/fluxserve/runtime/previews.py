"""Live previews: a denoising step's latents as a small picture, without the VAE.

A packed FLUX latent token stands for 16x16 pixels: FLUX.1's 16 latent channels times a
2x2 patch (64 values), FLUX.2's 32 channels times 2x2 (128 values, after the VAE's
batch-norm statistics). A linear map (with a bias) from one token's values to the mean
colours of its four 8x8 quarters makes a picture of width/8 x height/8 pixels at the cost
of one small matrix product: no VAE decode.

The map is fitted once per VAE, the first time a job asks for previews
(``fit_previewer``): synthetic colour images (flat blocks, gradients, textures) are
encoded by the pipeline's own VAE, normalised and packed exactly as the pipeline packs
the latents it denoises, also mixed with noise as mid-loop latents are, and decoded back
by the VAE; a ridge least-squares solve maps each token to the colours its quarters decode
to. Nothing is copied from another project's table of factors: any VAE the pipelines
accept gets its own map, and a pipeline whose latents are laid out otherwise gets none.

Mid-loop latents are still mostly noise; ``Previews`` shows the loop's current estimate
of the final latents instead (flow matching: x0 = x_t - sigma_t * velocity, the velocity
read off two consecutive steps), which looks like the final picture from the first steps.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image

logger = logging.getLogger(__name__)

PATCH = 16  # pixels per packed token side (8x VAE, 2x2 patches)
QUARTER = PATCH // 2  # the preview's pixel: a quarter of a token
FIT_SIZE = 128  # side of each synthetic image: 8x8 tokens
FIT_IMAGES = 32  # each also noised: 4096 tokens, for at most 129 unknowns per value
FIT_CHUNK = 16  # images encoded or decoded at once
FIT_SEED = 20240917
RIDGE = 1e-4  # relative to the mean feature energy: keeps the solve well posed
JPEG_QUALITY = 70
EVERY_FRACTION = 8  # a preview every steps // 8 steps (at least every step) ...
MIN_INTERVAL = 0.25  # ... and at most four a second


class LatentPreviewer:
    """Packed latent tokens -> RGB: ``weight`` (features + 1, 12), the 12 outputs being
    the four quarters' colours (row-major 2x2, then RGB) in 0..1."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight.float()
        self._on: dict[torch.device, torch.Tensor] = {}  # the weight per device it ran on

    @property
    def features(self) -> int:
        return self.weight.shape[0] - 1

    def colours(self, tokens: torch.Tensor) -> torch.Tensor:
        """(..., features) tokens -> (..., 12) quarter colours, on the tokens' device."""
        weight = self._on.get(tokens.device)
        if weight is None:
            weight = self._on.setdefault(tokens.device, self.weight.to(tokens.device))
        return tokens.float() @ weight[:-1] + weight[-1]

    def image(self, tokens: torch.Tensor, width: int, height: int) -> Image.Image:
        """One image's tokens (seq, features), in the pipelines' row-major order, as a
        picture of width/8 x height/8 pixels."""
        rows, columns = height // PATCH, width // PATCH
        if tokens.shape != (rows * columns, self.features):
            raise ValueError(f"tokens {tuple(tokens.shape)} for a {width}x{height} image")
        quarters = self.colours(tokens).view(rows, columns, 2, 2, 3)
        # (rows, columns, dy, dx, rgb) -> (rows, dy, columns, dx, rgb) -> (2 rows, 2 columns, rgb)
        pixels = quarters.permute(0, 2, 1, 3, 4).reshape(rows * 2, columns * 2, 3)
        pixels = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        return Image.fromarray(pixels, "RGB")

    def jpeg(self, tokens: torch.Tensor, width: int, height: int) -> bytes:
        buffer = io.BytesIO()
        self.image(tokens, width, height).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        return buffer.getvalue()


# -- fitting -----------------------------------------------------------------------------------


def synthetic_images(count: int = FIT_IMAGES, size: int = FIT_SIZE) -> torch.Tensor:
    """(count, 3, size, size) pictures in 0..1: coloured blocks of 1 to 8 per side, shown
    flat or blended, with noise of random strength, so that the fit sees flat colours,
    gradients and textures alike."""
    generator = torch.Generator().manual_seed(FIT_SEED)
    images = []
    for index in range(count):
        cells = (1, 2, 4, 8)[index % 4]
        grid = torch.rand(1, 3, cells, cells, generator=generator)
        mode = "nearest" if index % 3 == 0 else "bilinear"
        extra = {} if mode == "nearest" else {"align_corners": False}
        image = F.interpolate(grid, size=(size, size), mode=mode, **extra)
        noise = torch.randn(1, 3, size, size, generator=generator)
        amount = float(torch.rand((), generator=generator)) * 0.2 * (index % 2)
        images.append((image + amount * noise).clamp(0, 1))
    return torch.cat(images)


def token_features(pipeline: Any, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) pixels in 0..1 -> (B, H/16 * W/16, features): the VAE's latents,
    normalised and packed as ``pipeline`` packs the latents it denoises."""
    vae = pipeline.vae
    pixels = (pixels * 2 - 1).to(device=_vae_device(vae), dtype=vae.dtype)  # VAEs take -1..1
    if hasattr(vae, "bn"):
        # FLUX.2: the pipeline's own encoding (2x2 patches, then the VAE's batch-norm
        # statistics), packed (B, C*4, h, w) -> (B, h*w, C*4).
        return pipeline._pack_latents(pipeline._encode_vae_image(pixels, None))
    # FLUX.1 (FluxPipeline): (z - shift) * scale, packed (B, C, 2h, 2w) -> (B, h*w, C*4).
    latents = vae.encode(pixels).latent_dist.mode()
    latents = (latents - (vae.config.shift_factor or 0.0)) * vae.config.scaling_factor
    batch, channels, rows, columns = latents.shape
    return pipeline._pack_latents(latents, batch, channels, rows, columns)


def decode_tokens(pipeline: Any, tokens: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(B, seq, features) packed latents -> (B, 3, H, W) pixels in 0..1, decoded by the VAE
    as ``pipeline`` decodes its result (the inverse of ``token_features``)."""
    vae = pipeline.vae
    tokens = tokens.to(device=_vae_device(vae), dtype=vae.dtype)
    if hasattr(vae, "bn"):
        # FLUX.2: (B, h*w, C*4) -> (B, C*4, h, w), the batch-norm statistics undone, unpatched.
        batch, _, features = tokens.shape
        latents = tokens.transpose(1, 2).reshape(batch, features, height // PATCH, width // PATCH)
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(latents)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
        latents = pipeline._unpatchify_latents(latents * std.to(latents) + mean)
    else:
        latents = pipeline._unpack_latents(tokens, height, width, pipeline.vae_scale_factor)
        latents = latents / vae.config.scaling_factor + (vae.config.shift_factor or 0.0)
    pixels = vae.decode(latents, return_dict=False)[0]
    return ((pixels.float() + 1) / 2).clamp(0, 1)


def _vae_device(vae: Any) -> torch.device:
    from diffusers.utils.torch_utils import get_module_execution_device  # offload-aware

    return get_module_execution_device(vae)


def quarter_colours(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, H/16 * W/16, 12): each token's quarters' mean colours."""
    batch, _, height, width = pixels.shape
    means = F.avg_pool2d(pixels, QUARTER)  # (B, 3, H/8, W/8)
    rows, columns = height // PATCH, width // PATCH
    # (B, rgb, rows, dy, columns, dx) -> (B, rows, columns, dy, dx, rgb)
    quarters = means.view(batch, 3, rows, 2, columns, 2).permute(0, 2, 4, 3, 5, 1)
    return quarters.reshape(batch, rows * columns, 12)


def solve(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Ridge least squares with a bias: (N, F), (N, 12) -> (F + 1, 12)."""
    x = torch.cat([features.double(), torch.ones(len(features), 1, dtype=torch.float64)], 1)
    gram = x.T @ x
    penalty = RIDGE * gram.diagonal()[:-1].mean() * torch.eye(len(gram), dtype=torch.float64)
    penalty[-1, -1] = 0.0  # the bias is not shrunk
    return torch.linalg.solve(gram + penalty, x.T @ targets.double())


@contextlib.contextmanager
def _eager_decoder(vae: Any) -> Iterator[None]:
    """The VAE's decoder uncompiled for a while (a compiled one would recompile for the
    fit's image size)."""
    decoder = vae.decoder
    vae.decoder = getattr(decoder, "_orig_mod", decoder)
    try:
        yield
    finally:
        vae.decoder = decoder


def fit_previewer(pipeline: Any) -> LatentPreviewer | None:
    """The previewer of ``pipeline``'s VAE; None (logged) when its latents are not laid
    out as FLUX.1's or FLUX.2's packed tokens.

    The fit's latents are the synthetic images' own and, as mid-loop latents are, the
    same mixed with noise ((1 - sigma) x + sigma noise, sigma uniform in 0..1); its targets
    are the colours the VAE decodes them to, so the preview shows what the decode would.
    """
    name = type(pipeline).__name__
    generator = torch.Generator().manual_seed(FIT_SEED + 1)
    try:
        with torch.inference_mode(), _eager_decoder(pipeline.vae):
            clean = torch.cat([
                token_features(pipeline, chunk).float().cpu()
                for chunk in synthetic_images().split(FIT_CHUNK)
            ])  # fmt: skip
            sigma = torch.rand(len(clean), 1, 1, generator=generator)
            noise = torch.randn(clean.shape, generator=generator)
            tokens = torch.cat([clean, (1 - sigma) * clean + sigma * noise])
            decoded = torch.cat([
                decode_tokens(pipeline, chunk, FIT_SIZE, FIT_SIZE).cpu()
                for chunk in tokens.split(FIT_CHUNK)
            ])  # fmt: skip
        weight = solve(tokens.reshape(-1, tokens.shape[-1]), quarter_colours(decoded).view(-1, 12))
    except (AttributeError, RuntimeError, TypeError, ValueError) as exc:
        logger.warning("no live previews for %s: its latents could not be mapped to "
                       "colours (%s)", name, exc)  # fmt: skip
        return None
    if not torch.isfinite(weight).all():
        logger.warning("no live previews for %s: the colour fit did not converge", name)
        return None
    return LatentPreviewer(weight)


# -- during the loop ---------------------------------------------------------------------------


class Previews:
    """When previews are due in one denoising loop, and each made from the step's latents.

    ``wanted`` are the indices, in the loop's batch, of the images to preview (None for
    an image nobody asked to watch); a preview is made every ``steps // 8`` steps (at
    least every step), at most every ``MIN_INTERVAL`` seconds, never at the last step.
    """

    def __init__(
        self, previewer: LatentPreviewer, width: int, height: int, wanted: list[int | None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.previewer, self.width, self.height = previewer, width, height
        self.wanted = wanted
        self.clock = clock
        self._last = -float("inf")
        self._previous: torch.Tensor | None = None  # the last step's latents (no copy)
        self.broken = False

    def due(self, done: int, total: int) -> bool:
        every = max(1, total // EVERY_FRACTION)
        return done < total and done % every == 0 and self.clock() - self._last >= MIN_INTERVAL

    def at_step(self, pipe: Any, done: int, total: int, latents: Any) -> list[bytes | None] | None:
        """One JPEG per ``wanted`` entry when a preview is due at this step, else None.
        A preview that cannot be made ends this loop's previews, never its job."""
        previous, self._previous = self._previous, latents
        if self.broken or not isinstance(latents, torch.Tensor) or not self.due(done, total):
            return None
        self._last = self.clock()
        try:
            estimate = denoised(pipe, latents, previous)
            return [
                None if index is None
                else self.previewer.jpeg(estimate[index], self.width, self.height)
                for index in self.wanted
            ]  # fmt: skip
        except (IndexError, RuntimeError, ValueError) as exc:
            self.broken = True
            logger.warning("live previews stopped for this job: %s", exc)
            return None


def denoised(pipe: Any, latents: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
    """The loop's estimate of the final latents after a flow-matching Euler step from
    ``previous`` to ``latents``: x0 = x_t - sigma_t * (x_t - x_prev) / (sigma_t - sigma_prev).
    The latents themselves when that cannot be read (first step, another scheduler)."""
    scheduler = getattr(pipe, "scheduler", None)
    index = getattr(scheduler, "step_index", None)
    sigmas = getattr(scheduler, "sigmas", None)
    if previous is None or index is None or sigmas is None or index < 1 or index >= len(sigmas):
        return latents
    if getattr(scheduler.config, "stochastic_sampling", False) or previous.shape != latents.shape:
        return latents
    sigma, sigma_before = float(sigmas[index]), float(sigmas[index - 1])
    if sigma_before == sigma:
        return latents
    velocity = (latents.float() - previous.float()) / (sigma - sigma_before)
    return latents.float() - sigma * velocity
