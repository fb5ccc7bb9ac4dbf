"""A Runner over diffusers' FLUX pipelines: one worker serves every model it loads.

Models of the FLUX.1 family ship identical text encoders and VAE (T5-XXL alone is 9.5 GB),
so the runner loads each distinct component once and hands it to every pipeline that
uses it. Image-to-image runs on a text-to-image model's own modules (``from_pipe``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from diffusers import (
    DiffusionPipeline,
    Flux2KleinPipeline,
    Flux2Pipeline,
    FluxFillPipeline,
    FluxImg2ImgPipeline,
    FluxKontextPipeline,
    FluxPipeline,
)
from PIL import Image

from fluxserve.domain import GenerationRequest, Task
from fluxserve.errors import GenerationCancelled, LoraError, ModelLoadError
from fluxserve.images.ops import reference_sheet
from fluxserve.images.sizing import size_for_aspect
from fluxserve.runtime import text_encoding
from fluxserve.runtime.base import GenerationInputs, LoraFile, OnStep, ShouldStop
from fluxserve.runtime.device import configure_threads, pick_device, pick_dtype
from fluxserve.runtime.loras import AdapterSet
from fluxserve.runtime.memory import (
    NONE_PLAN,
    MemoryPlan,
    place_pipeline,
    probe_gpu,
    quantization_config,
    resolve_memory_plan,
)
from fluxserve.runtime.optimize import apply_plan, probe, set_step_cache, use_compile_cache
from fluxserve.runtime.previews import LatentPreviewer, Previews, fit_previewer
from fluxserve.runtime.prompt_cache import PromptCache
from fluxserve.runtime.tiers import (
    STEP_CACHE_THRESHOLD,
    Capabilities,
    Tier,
    TierPlan,
    job_tier,
    plan_tier,
)
from fluxserve.specs import ModelKind, ModelSpec
from fluxserve.weights import ResolvedModel, component_fingerprint

logger = logging.getLogger(__name__)

PIPELINE_CLASSES: dict[ModelKind, type[DiffusionPipeline]] = {
    ModelKind.KONTEXT: FluxKontextPipeline,
    ModelKind.FILL: FluxFillPipeline,
    ModelKind.FLUX2_KLEIN: Flux2KleinPipeline,
    ModelKind.FLUX2_DEV: Flux2Pipeline,
}
SHAREABLE = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")


class StepCallback:
    """diffusers' ``callback_on_step_end``: reports progress (with live previews when the
    loop's requests asked for them), stops the loop on request."""

    def __init__(
        self, on_step: OnStep, should_stop: ShouldStop, steps: int,
        previews: Previews | None = None,
    ) -> None:  # fmt: skip
        self.on_step, self.should_stop, self.steps = on_step, should_stop, steps
        self.previews = previews
        self.cancelled = False

    def __call__(self, pipe: Any, step: int, _timestep: Any, callback_kwargs: dict) -> dict:
        # Image-to-image runs only the last ``strength`` share of the steps.
        done, total = step + 1, pipe.num_timesteps or self.steps
        made = None
        if self.previews is not None:
            made = self.previews.at_step(pipe, done, total, callback_kwargs.get("latents"))
        if made is None:
            self.on_step(done, total)
        else:
            self.on_step(done, total, previews=made)
        if self.should_stop():
            self.cancelled = True
            pipe._interrupt = True  # diffusers' documented way to stop the loop
        return callback_kwargs


class FluxRunner:
    """Generates with diffusers' FLUX pipelines; owns the loop around them, not the math."""

    def __init__(
        self,
        models: list[ResolvedModel],
        device: str = "auto",
        threads: int | None = None,
        on_demand: bool = False,
        prompt_cache_bytes: int = 256 * 1024 * 1024,
        tiers: dict[str, Tier] | None = None,
        compile_mode: str = "auto",
        compile_cache_dir: Path | None = None,
        step_cache_threshold: float = STEP_CACHE_THRESHOLD,
        memory_preset: str = "none",
        cuda_graphs: bool = False,
        max_loaded_loras: int = 4,
    ) -> None:
        self.models = {model.name: model for model in models}
        # The tier each model is optimised for; a job may ask for less (fal's acceleration).
        self.tiers = {name: (tiers or {}).get(name, Tier.LOSSLESS) for name in self.models}
        self.tier_plans: dict[str, TierPlan] = {}
        self._compile_mode = compile_mode
        self._compile_cache_dir = compile_cache_dir
        self._step_cache_threshold = step_cache_threshold
        self._caps = Capabilities(device_type="cpu")
        self._optimised: set[int] = set()  # ids of modules already optimised (shared VAE)
        self._memory_preset = memory_preset
        self._cuda_graphs = cuda_graphs
        self.memory_plan: MemoryPlan = NONE_PLAN
        self.prompt_cache = PromptCache(prompt_cache_bytes) if prompt_cache_bytes > 0 else None
        self.on_demand = on_demand  # load each model when its first job arrives
        self.model_names = list(self.models)
        self.name = ", ".join(self.model_names)
        self._requested_device = device
        self._threads = threads
        self.pipelines: dict[str, Any] = {}
        self._img2img: dict[str, FluxImg2ImgPipeline] = {}
        self.shared: dict[str, list[str]] = {}  # model -> components it got from another
        self._loaded: dict[str, Any] = {}  # component fingerprint -> the module loaded
        self._device = torch.device("cpu")
        self._dtype = torch.float32
        self.max_loaded_loras = max_loaded_loras
        self.adapters: dict[int, AdapterSet] = {}  # id(transformer) -> its loaded LoRAs
        self.last_lora_report: list[dict] = []  # what the last job's LoRAs took
        # id(VAE) -> its live-preview map, fitted when a job first asks (None: none fits).
        self.previewers: dict[int, LatentPreviewer | None] = {}

    def load(self) -> None:
        # Per-component loading bars mean nothing in a server log.
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.disable_progress_bar()
        self._device = pick_device(self._requested_device)
        self._dtype = pick_dtype(self._device)
        self._caps = probe(self._device)
        self._plan_memory()
        threads = configure_threads(self._device, self._threads)
        if self.on_demand:
            logger.info("serving %s on %s; each model loads with its first job",
                        self.name, self._device)  # fmt: skip
            return
        for model in self.models.values():
            self._load_model(model)
        logger.info("loaded %s on %s (%s, %d CPU threads)",
                    self.name, self._device, self._dtype, threads)  # fmt: skip

    @property
    def device(self) -> str:
        """The device the models run on (once loaded): for the workers table."""
        return str(self._device)

    def memory_stats(self) -> tuple[int | None, int | None]:
        """(allocated, peak allocated) bytes of this process on its CUDA device, for the
        workers table and /metrics; (None, None) off CUDA."""
        if self._device.type != "cuda":
            return None, None
        return (
            torch.cuda.memory_allocated(self._device),
            torch.cuda.max_memory_allocated(self._device),
        )

    def _plan_memory(self) -> None:
        total, capability = probe_gpu(self._device)
        plan, notes = resolve_memory_plan(
            self._memory_preset, self._device.type, total, capability=capability
        )
        quiet = self._memory_preset == "auto" and self._device.type != "cuda"
        for note in [] if quiet else notes:  # auto on a CPU has nothing to say
            logger.warning("%s", note)
        self.memory_plan = plan
        if plan.preset != "none":
            logger.info("memory: %s", plan.describe())

    def _load_model(self, model: ResolvedModel) -> None:
        if model.needs_build:
            from fluxserve.runtime.tiny import make_tiny

            make_tiny(model.path, model.spec.source.removeprefix("builtin:"))
        # Model offload hooks belong to one pipeline: modules it moves are not shared.
        share = len(self.models) > 1 and self.memory_plan.offload != "model"
        fingerprints = self._fingerprints(model) if share else {}
        reuse = {name: self._loaded[fp] for name, fp in fingerprints.items() if fp in self._loaded}
        quantization = quantization_config(self.memory_plan, self._dtype)
        pipeline = self._load_one(model, self._dtype, reuse, quantization)
        place_pipeline(pipeline, self.memory_plan, self._device)
        self.pipelines[model.name] = pipeline
        for name, fp in fingerprints.items():
            self._loaded.setdefault(fp, getattr(pipeline, name))
        self._optimise(model.name, self.pipelines[model.name])
        if reuse:
            self.shared[model.name] = sorted(reuse)
            logger.info("%s shares %s with a model loaded before it", model.name,
                        ", ".join(sorted(reuse)))  # fmt: skip

    def _optimise(self, name: str, pipeline: Any) -> None:
        plan = plan_tier(
            self.tiers[name],
            self._caps,
            self._compile_mode,
            weights_quantized=self.memory_plan.transformer_weights != "model-dtype",
            cache_threshold=self._step_cache_threshold,
            cuda_graphs=self._cuda_graphs,
            step_cache_works=not self.models[name].spec.is_flux2,
        )
        for note in plan.notes:  # what this machine cannot run, and what runs instead
            logger.warning("%s: %s", name, note)
        if plan.compile and self._compile_cache_dir is not None:
            use_compile_cache(self._compile_cache_dir)
        apply_plan(pipeline, plan, self._optimised)
        self.tier_plans[name] = plan
        logger.info("%s: %s", name, plan.describe())

    def _use_tier(self, request: GenerationRequest, pipeline: Any) -> None:
        """Turn the step cache on for jobs at the cache tier and off for the others."""
        plan = self.tier_plans[request.model]
        if plan.step_cache:
            tier = job_tier(request.acceleration, self.tiers[request.model])
            set_step_cache(pipeline.transformer, tier is Tier.CACHE, plan.cache_threshold)

    def warm_up(self, sizes: list[tuple[int, int]] | None = None) -> None:
        """Generate once per model at each size (default: the model's default size), so
        compilation and kernel selection happen before the first job, not during it."""
        for name, model in self.models.items():
            if name not in self.pipelines:
                continue  # on demand: it warms up with its first job
            spec = model.spec
            for width, height in sizes or [size_for_aspect(1.0, spec.base_area)]:
                request = warmup_request(name, spec, width, height)
                inputs = warmup_inputs(spec.kind, width, height)
                self.generate(request, inputs, lambda done, total: None, lambda: False)
                logger.info("%s warmed up at %dx%d", name, width, height)

    @staticmethod
    def _fingerprints(model: ResolvedModel) -> dict[str, str]:
        found = {name: component_fingerprint(model.path / name) for name in SHAREABLE}
        return {name: fp for name, fp in found.items() if fp is not None}

    @staticmethod
    def _load_one(
        model: ResolvedModel, dtype: torch.dtype, reuse: dict[str, Any], quantization: Any = None
    ) -> Any:
        if model.spec.random_weights:
            logger.warning(
                "model %r has random weights: its images are noise. It is for trying the API "
                "and for tests; load a real model (flux2-klein-4b, flux-schnell...) for pictures.",
                model.name,
            )
        pipeline_class = PIPELINE_CLASSES.get(model.spec.kind, FluxPipeline)
        try:
            if quantization is not None:
                reuse = {**reuse, "quantization_config": quantization}
            pipeline = pipeline_class.from_pretrained(model.path, dtype=dtype, **reuse)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"Could not load {model.name} from {model.path}: {exc}") from exc
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def _pipeline_for(self, request: GenerationRequest) -> Any:
        if request.model not in self.models:
            raise RuntimeError(f"model {request.model} is not served by this worker")
        if request.model not in self.pipelines:  # on demand: its first job
            logger.info("loading %s for its first job", request.model)
            self._load_model(self.models[request.model])
        if request.task is not Task.IMAGE_TO_IMAGE:
            return self.pipelines[request.model]
        if request.model not in self._img2img:  # the same modules, another loop: no memory
            base = self.pipelines[request.model]
            # from_pipe casts the (shared) modules to ``dtype``, float32 if not given; the
            # cast to their own dtype changes nothing but warns, so the warning is muted.
            verbosity = diffusers.utils.logging.get_verbosity()
            diffusers.utils.logging.set_verbosity_error()
            try:
                img2img = FluxImg2ImgPipeline.from_pipe(base, dtype=base.dtype)
            finally:
                diffusers.utils.logging.set_verbosity(verbosity)
            img2img.set_progress_bar_config(disable=True)
            self._img2img[request.model] = img2img
        return self._img2img[request.model]

    def generate(
        self,
        request: GenerationRequest,
        inputs: GenerationInputs,
        on_step: OnStep,
        should_stop: ShouldStop,
    ) -> list[Image.Image]:
        pipeline = self._pipeline_for(request)
        spec = self.models[request.model].spec
        self._use_tier(request, pipeline)
        self._use_loras(request.model, pipeline, inputs.loras)
        # A request of several images is previewed by its first.
        previews = self._previews(pipeline, [request])
        step_end = StepCallback(on_step, should_stop, request.steps, previews)

        # Noise from a seeded CPU generator: the same seed gives the same image on any device.
        generator = torch.Generator("cpu").manual_seed(request.seed)
        arguments = {
            **self._prompt_arguments(pipeline, spec, request.prompt, request.num_images),
            **loop_arguments(request, spec),
            "generator": generator,
            "callback_on_step_end": step_end,
        }
        arguments.update(task_arguments(request, inputs, spec))
        with torch.inference_mode():
            output = pipeline(**arguments)
        if step_end.cancelled:
            raise GenerationCancelled("generation stopped before its last step")
        return list(output.images)

    def generate_batch(
        self, requests: list[GenerationRequest], on_step: OnStep, should_stop: ShouldStop,
        loras: list[LoraFile] | None = None,
    ) -> list[Image.Image]:  # fmt: skip
        """One image per request, made as one batch: each keeps its prompt and its seed's
        noise, so each image matches its solo image within float tolerance.

        The requests share a batch key (model, task, size, steps, guidance) and are
        single-image text-to-image requests (``engine.batcher.batchable``).
        """
        first = requests[0]
        if any(r.batch_key != first.batch_key or r.num_images != 1 for r in requests):
            raise ValueError("a batch takes single-image requests that share a batch key")
        pipeline = self._pipeline_for(first)
        spec = self.models[first.model].spec
        self._use_tier(first, pipeline)  # the tier is part of the batch key
        self._use_loras(first.model, pipeline, loras or [])  # so are the LoRAs
        # Previews are not in the batch key: each job that asked sees its own image.
        previews = self._previews(pipeline, requests)
        step_end = StepCallback(on_step, should_stop, first.steps, previews)

        prompts = [self._prompt_arguments(pipeline, spec, r.prompt, 1) for r in requests]
        if "prompt" in prompts[0]:  # no cache: the pipeline encodes the list itself
            texts: dict[str, Any] = {"prompt": [r.prompt for r in requests]}
        else:
            texts = text_encoding.concatenate(
                [{k: v for k, v in p.items() if k != "num_images_per_prompt"} for p in prompts]
            )
        # A generator per image: image i's noise is exactly its solo noise.
        generators = [torch.Generator("cpu").manual_seed(r.seed) for r in requests]
        with torch.inference_mode():
            output = pipeline(
                **texts,
                **loop_arguments(first, spec),
                num_images_per_prompt=1,
                generator=generators,
                callback_on_step_end=step_end,
                **(kontext_area(first) if spec.kind is ModelKind.KONTEXT else {}),
            )
        if step_end.cancelled:
            raise GenerationCancelled("generation stopped before its last step")
        return list(output.images)

    def _previews(self, pipeline: Any, requests: list[GenerationRequest]) -> Previews | None:
        """The loop's live previews: one per request that asked (of the loop's image at
        that request's index), or None when none asked or the VAE has no preview map."""
        wanted = [index if request.previews else None for index, request in enumerate(requests)]
        if all(index is None for index in wanted):
            return None
        previewer = self._previewer(pipeline)
        if previewer is None:
            return None
        return Previews(previewer, requests[0].width, requests[0].height, wanted)

    def _previewer(self, pipeline: Any) -> LatentPreviewer | None:
        """``pipeline``'s preview map, fitted once per VAE (shared VAEs share it)."""
        key = id(pipeline.vae)
        if key not in self.previewers:
            started = time.perf_counter()
            self.previewers[key] = fit_previewer(pipeline)  # logs when none fits
            if self.previewers[key] is not None:
                logger.info("live previews for %s's latents fitted in %.2f s",
                            type(pipeline).__name__, time.perf_counter() - started)  # fmt: skip
        return self.previewers[key]

    def _use_loras(self, model: str, pipeline: Any, loras: list[LoraFile]) -> None:
        """Make ``loras`` the active adapters (none: the base model)."""
        adapters = self.adapters.get(id(pipeline.transformer))
        if not loras and adapters is None:
            self.last_lora_report = []
            return
        if loras:
            self._check_lora_weights(model)
        if adapters is None:
            plan = self.tier_plans[model]
            if plan.fuse_qkv:  # a LoRA on to_q/to_k/to_v needs the projections apart
                pipeline.transformer.unfuse_qkv_projections()
                logger.info("%s: QKV projections unfused for LoRAs", model)
            adapters = AdapterSet(self.max_loaded_loras, hotswap=plan.compile)
            self.adapters[id(pipeline.transformer)] = adapters
        self.last_lora_report = adapters.apply(pipeline, loras, model)

    def _check_lora_weights(self, model: str) -> None:
        """LoRAs run on the lossless tier's weights: quantised weights (fp8, NF4) either
        fail to take an adapter or silently ignore it, so such a job is refused."""
        plan = self.tier_plans[model]
        quantised = self.memory_plan.transformer_weights
        if plan.fp8_weights or quantised != "model-dtype":
            weights = "fp8" if plan.fp8_weights else quantised
            raise LoraError(
                "lora_unsupported_weights",
                f"{model} is loaded with {weights} transformer weights, which LoRAs cannot "
                "be applied to; serve it at --tier lossless without a quantising "
                "--memory-preset to use LoRAs",
            )

    def _prompt_arguments(
        self, pipeline: Any, spec: ModelSpec, prompt: str, num_images: int
    ) -> dict[str, Any]:
        """The prompt, or its embeddings from the cache (computed once per prompt)."""
        if self.prompt_cache is None:
            # One batch of ``num_images``, all noise drawn from the request's one seed.
            return {"prompt": prompt, "num_images_per_prompt": num_images}
        embeddings = self._cached_embeddings(pipeline, spec, prompt)
        if text_encoding.uses_negative_prompt(pipeline):
            # The pipeline would encode the empty prompt once for the whole batch; given
            # here, it is one per image like the prompt's.
            negative = self._cached_embeddings(pipeline, spec, "")
            embeddings = {**embeddings, **text_encoding.negative_name(negative)}
        # The batch of ``num_images`` as the pipeline would build it: the same embeddings
        # repeated, and the noise of all images drawn from the one seeded generator.
        return {**text_encoding.repeat(embeddings, num_images), "num_images_per_prompt": 1}

    def _cached_embeddings(self, pipeline: Any, spec: ModelSpec, prompt: str) -> dict:
        assert self.prompt_cache is not None
        encoders = (id(pipeline.text_encoder), id(getattr(pipeline, "text_encoder_2", None)))
        key = (*encoders, prompt, spec.max_sequence_length, spec.text_encoder_layers)
        return self.prompt_cache.get(key, lambda: text_encoding.encode(pipeline, spec, prompt))


def loop_arguments(request: GenerationRequest, spec: ModelSpec) -> dict[str, Any]:
    """The denoising loop's arguments: size, steps, guidance, sequence length."""
    # Models without a guidance input ignore it; the pipeline needs a number anyway (1.0
    # keeps [klein]'s distilled models from warning that it is ignored).
    unused = 1.0 if spec.is_flux2 else 0.0
    return {
        "width": request.width,
        "height": request.height,
        "num_inference_steps": request.steps,
        "guidance_scale": request.guidance if request.guidance is not None else unused,
        "max_sequence_length": spec.max_sequence_length,
        **text_encoding.layer_arguments(spec),
    }


def task_arguments(
    request: GenerationRequest, inputs: GenerationInputs, spec: ModelSpec
) -> dict[str, Any]:
    """The pipeline arguments a task adds to text-to-image's."""
    if request.task is Task.IMAGE_TO_IMAGE:
        return {"image": inputs.images[0].convert("RGB"), "strength": request.strength}
    if request.task is Task.FILL:
        return {"image": inputs.images[0].convert("RGB"), "mask_image": inputs.mask}
    if request.task is Task.EDIT and spec.is_flux2:
        # FLUX.2 reads every reference natively: a list, each its own tokens.
        return {"image": [image.convert("RGB") for image in inputs.images] or None}
    if request.task is Task.EDIT:
        kontext = kontext_area(request)
        if not inputs.images:
            return kontext
        # Real Kontext weights work best with references at their trained resolutions;
        # the tiny models keep references small so tests stay fast.
        sheet = reference_sheet(inputs.images)
        return {**kontext, "image": sheet, "_auto_resize": not spec.random_weights}
    return {}


def kontext_area(request: GenerationRequest) -> dict[str, Any]:
    # Kontext rescales every output to ``max_area`` (default 1 MP) at the requested shape;
    # the API already chose the size, so the area is exactly that size's.
    return {"max_area": request.width * request.height}


# A warm-up job's steps: enough for every compiled region to run, far fewer than a job's.
WARMUP_STEPS = 2


def warmup_request(model: str, spec: ModelSpec, width: int, height: int) -> GenerationRequest:
    task = {ModelKind.KONTEXT: Task.EDIT, ModelKind.FILL: Task.FILL}.get(
        spec.kind, Task.TEXT_TO_IMAGE
    )
    return GenerationRequest(
        model=model,
        prompt="warm-up",
        width=width,
        height=height,
        steps=WARMUP_STEPS,
        guidance=spec.effective_guidance(None),
        seed=0,
        task=task,
    )


def warmup_inputs(kind: ModelKind, width: int, height: int) -> GenerationInputs:
    """Editing and fill models need an image (and a mask) to run at all."""
    if kind is ModelKind.KONTEXT:
        return GenerationInputs(images=[Image.new("RGB", (width, height), "gray")])
    if kind is ModelKind.FILL:
        mask = Image.new("L", (width, height), 255)
        return GenerationInputs(images=[Image.new("RGB", (width, height), "gray")], mask=mask)
    return GenerationInputs()
