"""``fluxserve generate``: one image, in this process, with a progress bar."""

from __future__ import annotations

import argparse

from tqdm import tqdm

from fluxserve.config import Settings
from fluxserve.domain import MAX_SEED, GenerationRequest, OutputFormat, Task, random_seed
from fluxserve.errors import InvalidRequest
from fluxserve.logs import configure_logging
from fluxserve.specs import ModelKind

SUFFIX_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


def build_request(model_name: str, spec, args: argparse.Namespace) -> GenerationRequest:
    fmt = SUFFIX_FORMATS.get(args.output.suffix.lower())
    if fmt is None:
        raise InvalidRequest("output", "the output file must end in .png, .jpg, .jpeg or .webp")
    for field in ("width", "height"):
        value = getattr(args, field)
        if value < 64 or value % 16:
            raise InvalidRequest(field, f"--{field} must be a multiple of 16 and at least 64")
    if args.seed is not None and not 0 <= args.seed <= MAX_SEED:
        raise InvalidRequest("seed", f"--seed must be 0 to {MAX_SEED}")
    return GenerationRequest(
        model=model_name,
        prompt=args.prompt,
        width=args.width,
        height=args.height,
        steps=spec.effective_steps(args.steps),
        guidance=spec.effective_guidance(args.guidance),
        seed=args.seed if args.seed is not None else random_seed(),
        output_format=OutputFormat(fmt),
    )


def generate(settings: Settings, args: argparse.Namespace) -> int:
    from fluxserve.runtime.postprocess import encode_image, generation_metadata
    from fluxserve.weights import resolve_model

    configure_logging(settings.log_level, settings.log_format)
    # Check the model and the arguments before paying for importing torch.
    model = resolve_model(settings.model[0], settings.models_dir)
    if Task.TEXT_TO_IMAGE not in model.spec.tasks and model.spec.kind is not ModelKind.KONTEXT:
        raise InvalidRequest(
            "model", f"{model.name} needs an input image; use the server's image endpoints"
        )
    request = build_request(model.name, model.spec, args)
    from fluxserve.runtime.base import GenerationInputs
    from fluxserve.runtime.diffusers_runner import FluxRunner

    runner = FluxRunner([model], device=settings.device)
    runner.load()
    with tqdm(total=request.steps, desc="denoising", unit="step") as bar:

        def on_step(done: int, _total: int) -> None:
            bar.update(done - bar.n)

        image = runner.generate(request, GenerationInputs(), on_step, lambda: False)[0]
    metadata = generation_metadata(request, settings.metadata_prompt)
    args.output.write_bytes(encode_image(image, request.output_format, metadata))
    print(f"wrote {args.output} (seed {request.seed})")
    return 0
