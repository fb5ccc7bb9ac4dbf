"""Seeded random weights for a module built on the meta device: storage on the target
device in the target dtype, and values that keep every block's activations finite. Used by
the full-size builds of both families (fullsize.py, fullsize_flux2.py)."""

from __future__ import annotations

import torch
from torch import nn

INIT_STD = 0.02  # as transformers' initializer_range; keeps bf16 activations finite


def materialise(
    module: nn.Module, device: torch.device | str, dtype: torch.dtype, seed: int
) -> nn.Module:
    """Give a meta-device ``module`` storage on ``device`` in ``dtype`` and random weights.

    Matrices and convolution kernels: N(0, 0.02); norm scales 1; biases and other vectors 0.
    Normalised layers then keep activations of order one in every block, so no value runs
    to inf or NaN (a NaN could change what the step cache skips, and so the speed).
    """
    saved = {name: buffer.clone() for name, buffer in module.named_buffers()}
    # On meta the cast is free; float buffers are cast too, as from_pretrained does. (The
    # plain nn.Module.to: diffusers' own warns about casting instead of loading in a dtype.)
    nn.Module.to(module, dtype=dtype)
    module.to_empty(device=device)
    if hasattr(module, "tie_weights"):  # to_empty gives each tied parameter its own storage
        module.tie_weights()
    generator = torch.Generator(device=torch.device(device)).manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            is_norm = "Norm" in type(sub).__name__
            for pname, param in sub.named_parameters(recurse=False):
                if param.ndim >= 2:
                    param.normal_(0.0, INIT_STD, generator=generator)
                elif is_norm and pname == "weight":
                    param.fill_(1.0)
                else:
                    param.zero_()
        for name, value in saved.items():
            module.get_buffer(name).copy_(value)
    return module.eval().requires_grad_(False)


# A seed per component, the same in every model: the encoders and the VAE come out
# identical in all four, as in the FLUX.1 family.
COMPONENT_SEEDS = {"text_encoder": 1, "text_encoder_2": 2, "vae": 3, "transformer": 4}
