"""BFL routes: thin; conversion lives in convert.py, the job logic in JobService."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from fastapi import APIRouter, Depends, Query

from fluxserve.api.auth import CallerDep, SubmitterDep, authenticate, owner_of
from fluxserve.api.bfl import convert
from fluxserve.api.bfl.convert import Builder
from fluxserve.api.bfl.protocol import (
    AsyncResponse,
    ByNameInputs,
    CreditsResponse,
    DeleteFinetuneInputs,
    DeleteFinetuneResponse,
    FinetuneDetailResponse,
    FinetuneFluxProFillInputs,
    FinetuneFluxUltraInputs,
    Flux2FlexInputs,
    Flux2Inputs,
    Flux2KleinInputs,
    FluxDevInputs,
    FluxKontextProInputs,
    FluxPro11Inputs,
    FluxProExpandInputs,
    FluxProFillInputs,
    FluxProInputs,
    FluxSchnellInputs,
    FluxUltraInputs,
    MyFinetunesResponse,
    ResultResponse,
    _CommonInputs,
    _Flux2Common,
)
from fluxserve.api.deps import BaseUrlDep, ServicesDep
from fluxserve.api.errors import error_responses
from fluxserve.api.validators import lora_wants
from fluxserve.domain import Task
from fluxserve.errors import Forbidden, ModelNotAvailable
from fluxserve.jobs.loras import LoraWanted
from fluxserve.jobs.service import Submission
from fluxserve.specs import ModelSpec

router = APIRouter(prefix="/v1", tags=["bfl"])

# What each kind of route can answer besides 200, in BFL's error shapes (api/errors.py).
SUBMIT_ERRORS = error_responses("bfl", 401, 402, 404, 422, 429, 503)
READ_ERRORS = error_responses("bfl", 401, 503)


# The routes are plain ``def``: FastAPI runs them in the thread pool, where fetching and
# decoding input images may block without stalling the event loop.
def _submit(
    endpoint: str, inputs: _CommonInputs, services: ServicesDep, base: str, caller: Submission,
    build: Builder = convert.text_to_image_request, raw: bool = False,
    loras: Sequence[LoraWanted] = (),
) -> AsyncResponse:  # fmt: skip
    """Every BFL submit: route the endpoint to a model (``raw``: Ultra's raw mode), build the
    request and its input images with ``build``, add its LoRAs and live previews, queue it,
    answer with where to poll."""
    spec = services.router.route(endpoint, raw=raw)
    request, prepared = build(endpoint, inputs, spec, services.images)
    request = convert.with_previews(services.loras.attach(request, list(loras)), inputs)
    caller = convert.with_webhook(caller, inputs, base)
    job = services.jobs.submit(request, *(prepared.parts() if prepared else ()), submission=caller)
    return convert.to_async_response(job, base, services.prices)


@router.post("/flux-dev", response_model=AsyncResponse, responses=SUBMIT_ERRORS)
def flux_dev(inputs: FluxDevInputs, services: ServicesDep, base: BaseUrlDep, caller: SubmitterDep):
    """Generate an image with FLUX.1 [dev]."""
    return _submit("flux-dev", inputs, services, base, caller)


@router.post("/flux-schnell", response_model=AsyncResponse, responses=SUBMIT_ERRORS)
def flux_schnell(
    inputs: FluxSchnellInputs, services: ServicesDep, base: BaseUrlDep, caller: SubmitterDep
):
    """Generate an image with FLUX.1 [schnell] (a fluxserve endpoint; BFL does not host it)."""
    return _submit("flux-schnell", inputs, services, base, caller)


@router.post("/flux-pro-1.1", response_model=AsyncResponse, responses=SUBMIT_ERRORS)
def flux_pro_11(
    inputs: FluxPro11Inputs, services: ServicesDep, base: BaseUrlDep, caller: SubmitterDep
):
    """Generate an image on the model mapped to FLUX1.1 [pro]."""
    return _submit("flux-pro-1.1", inputs, services, base, caller)


@router.post("/flux-pro", response_model=AsyncResponse, responses=SUBMIT_ERRORS)
def flux_pro(inputs: FluxProInputs, services: ServicesDep, base: BaseUrlDep, caller: SubmitterDep):
    """Generate an image on the model mapped to FLUX.1 [pro] (legacy endpoint)."""
    return _submit("flux-pro", inputs, services, base, caller)


@router.post("/flux-pro-1.1-ultra", response_model=AsyncResponse, responses=SUBMIT_ERRORS)
def flux_pro_11_ultra(
    inputs: FluxUltraInputs, services: ServicesDep, base: BaseUrlDep, caller: SubmitterDep
):
    """FLUX1.1 [pro] Ultra: about 4 MP at ``aspect_ratio`` (on a FLUX.2 model; a FLUX.1
    model makes ``--ultra-megapixels``); ``raw`` on FLUX.1 Krea [dev] when it is loaded."""
    build = functools.partial(convert.ultra_request, megapixels=services.settings.ultra_megapixels)
    return _submit("flux-pro-1.1-ultra", inputs, services, base, caller, build, raw=inputs.raw)


# -- finetunes: LoRAs the operator registered (``fluxserve loras add``) -----------------------


def _finetune(inputs: FinetuneFluxUltraInputs | FinetuneFluxProFillInputs,
              services: ServicesDep) -> list[LoraWanted]:  # fmt: skip
    services.loras.registered(inputs.finetune_id)  # a name, never a URL or a repo id
    return [LoraWanted("finetune_id", inputs.finetune_id, inputs.finetune_strength,
                       "finetune_strength")]  # fmt: skip


@router.post("/flux-pro-1.1-ultra-finetuned", response_model=AsyncResponse, responses=SUBMIT_ERRORS)
def flux_pro_11_ultra_finetuned(
    inputs: FinetuneFluxUltraInputs, services: ServicesDep, base: BaseUrlDep,
    caller: SubmitterDep,
):  # fmt: skip
    """Ultra with the registered LoRA ``finetune_id`` at ``finetune_strength``."""
    build = functools.partial(convert.ultra_request, megapixels=services.settings.ultra_megapixels)
    return _submit("flux-pro-1.1-ultra-finetuned", inputs, services, base, caller, build,
                   loras=_finetune(inputs, services))  # fmt: skip


@router.post("/flux-pro-1.0-fill-finetuned", response_model=AsyncResponse, responses=SUBMIT_ERRORS)
def flux_pro_fill_finetuned(
    inputs: FinetuneFluxProFillInputs, services: ServicesDep, base: BaseUrlDep,
    caller: SubmitterDep,
):  # fmt: skip
    """Fill with the registered LoRA ``finetune_id`` at ``finetune_strength``."""
    return _submit("flux-pro-1.0-fill-finetuned", inputs, services, base, caller,
                   convert.fill_request, loras=_finetune(inputs, services))  # fmt: skip


@router.get("/my_finetunes", response_model=MyFinetunesResponse, responses=READ_ERRORS)
def my_finetunes(services: ServicesDep, _key: CallerDep) -> MyFinetunesResponse:
    """The registered LoRAs, by name (every key sees the operator's registry)."""
    return MyFinetunesResponse(finetunes=[entry.name for entry in services.loras.registry.all()])


@router.get(
    "/finetune_details",
    response_model=FinetuneDetailResponse,
    responses=error_responses("bfl", 401, 404, 422, 503),
)
def finetune_details(
    services: ServicesDep,
    _key: CallerDep,
    finetune_id: str = Query(..., min_length=1, max_length=200),
) -> FinetuneDetailResponse:
    """One registered LoRA: its source and default scale."""
    entry = services.loras.registry.get(finetune_id)
    if entry is None:
        raise ModelNotAvailable(f"No LoRA is registered as {finetune_id!r}.")
    return FinetuneDetailResponse(finetune_details=convert.finetune_details(entry))


@router.post(
    "/delete_finetune",
    response_model=DeleteFinetuneResponse,
    responses=error_responses("bfl", 401, 403, 404, 422, 503),
)
def delete_finetune(
    inputs: DeleteFinetuneInputs, services: ServicesDep, key: CallerDep
) -> DeleteFinetuneResponse:
    """Remove a registered LoRA: the operator's registry, so only without API keys (else
    `fluxserve loras remove NAME` on the server)."""
    if key is not None:
        raise Forbidden(
            "Registered LoRAs belong to the operator: remove one with `fluxserve loras "
            "remove NAME`."
        )
    if not services.loras.registry.remove(inputs.finetune_id):
        raise ModelNotAvailable(f"No LoRA is registered as {inputs.finetune_id!r}.")
    return convert.deleted_finetune(inputs.finetune_id)


@router.post("/flux-kontext-pro", response_model=AsyncResponse, responses=SUBMIT_ERRORS)
def flux_kontext_pro(
    inputs: FluxKontextProInputs, services: ServicesDep, base: BaseUrlDep, caller: SubmitterDep
):
    """Edit up to four reference images as the prompt says (or draw from the prompt alone);
    served by a FLUX.2 model when no Kontext model is loaded."""
    return _submit("flux-kontext-pro", inputs, services, base, caller, convert.kontext_request)


@router.post("/flux-kontext-max", response_model=AsyncResponse, responses=SUBMIT_ERRORS)
def flux_kontext_max(
    inputs: FluxKontextProInputs, services: ServicesDep, base: BaseUrlDep, caller: SubmitterDep
):
    """As flux-kontext-pro; served by the same Kontext model unless --alias maps it."""
    return _submit("flux-kontext-max", inputs, services, base, caller, convert.kontext_request)


@router.post("/flux-pro-1.0-fill", response_model=AsyncResponse, responses=SUBMIT_ERRORS)
def flux_pro_fill(
    inputs: FluxProFillInputs, services: ServicesDep, base: BaseUrlDep, caller: SubmitterDep
):
    """Inpaint: repaint the mask's white area (or the image's transparent pixels)."""
    return _submit("flux-pro-1.0-fill", inputs, services, base, caller, convert.fill_request)


@router.post("/flux-pro-1.0-expand", response_model=AsyncResponse, responses=SUBMIT_ERRORS)
def flux_pro_expand(
    inputs: FluxProExpandInputs, services: ServicesDep, base: BaseUrlDep, caller: SubmitterDep
):
    """Outpaint: add top/bottom/left/right pixels to the image and paint them in."""
    return _submit("flux-pro-1.0-expand", inputs, services, base, caller, convert.fill_request)


# -- FLUX.2: one route per hosted name, each to the model "which model answers" picks ----------


def _flux2_route(endpoint: str, inputs_type: type[_Flux2Common], summary: str) -> None:
    def submit(inputs: _Flux2Common, services: ServicesDep, base: BaseUrlDep,
               caller: SubmitterDep) -> AsyncResponse:  # fmt: skip
        return _submit(endpoint, inputs, services, base, caller, convert.flux2_request)

    submit.__doc__ = summary
    # Annotations are strings here (``from __future__``); FastAPI resolves them in this
    # module's globals, where the body's type for this route is not.
    submit.__annotations__["inputs"] = inputs_type
    router.add_api_route(
        f"/{endpoint}", submit, methods=["POST"], response_model=AsyncResponse,
        responses=SUBMIT_ERRORS, name=endpoint.replace("-", "_"),
    )  # fmt: skip


FLUX2_ROUTES: dict[str, tuple[type[_Flux2Common], str]] = {
    "flux-2-pro": (Flux2Inputs, "FLUX.2 [pro]: generate, or edit up to 8 reference images."),
    "flux-2-pro-preview": (Flux2Inputs, "As flux-2-pro (BFL's preview of the next [pro])."),
    "flux-2-max": (Flux2Inputs, "FLUX.2 [max]: generate, or edit up to 8 reference images."),
    "flux-2-flex": (
        Flux2FlexInputs,
        "FLUX.2 [flex]: as flux-2-pro, with steps, guidance and prompt upsampling.",
    ),
    "flux-2-klein-4b": (Flux2KleinInputs, "FLUX.2 [klein] 4B: generate, or edit up to 4 images."),
    "flux-2-klein-9b": (Flux2KleinInputs, "FLUX.2 [klein] 9B: generate, or edit up to 4 images."),
    "flux-2-klein-9b-preview": (Flux2KleinInputs, "As flux-2-klein-9b (BFL's KV-cache variant)."),
}
for _endpoint, (_inputs_type, _summary) in FLUX2_ROUTES.items():
    _flux2_route(_endpoint, _inputs_type, _summary)


@router.get("/credits", response_model=CreditsResponse, responses=READ_ERRORS)
def credits(services: ServicesDep, key: CallerDep) -> CreditsResponse:
    """The caller's credits left: its key's budget (``fluxserve keys create --credits``)
    less what its tasks cost at ``--price-table``'s prices; null without a budget."""
    return CreditsResponse(credits=services.keys.remaining_credits(key))


# async, so a poll is answered on the event loop without a thread-pool hop (which costs
# more than the read itself): a SQLite read in WAL mode never waits for a writer.
@router.get(
    "/get_result", response_model=ResultResponse, responses=error_responses("bfl", 401, 422, 503)
)
async def get_result(services: ServicesDep, base: BaseUrlDep, key: CallerDep, id: str = Query(...)):
    """Status of a task and, once Ready, a signed link to its image."""
    job = await services.jobs.read(services.jobs.get, id, owner_of(key))
    if job is None:
        return convert.not_found(id)
    urls = await services.jobs.read(services.jobs.result_urls, job, base)
    return convert.to_result_response(job, urls)


# ``POST /v1/{name}``: any loaded model (or --alias) by name; the playground submits here.
# app.py includes this router last, so every fixed route wins over it.
by_name_router = APIRouter()


async def named_model(name: str, services: ServicesDep) -> ModelSpec:
    """The text-to-image model called ``name`` (or aliased so); else 404, before the body
    is validated. (async: no thread-pool hop for a dict lookup.)"""
    table = services.router
    spec = table.models.get(table.aliases.get(name, name))
    if spec is None:
        raise ModelNotAvailable(
            f"No endpoint or loaded model is called {name}; this server has "
            f"{', '.join(table.models)}."
        )
    if Task.TEXT_TO_IMAGE not in spec.tasks:
        raise ModelNotAvailable(
            f"{spec.name} is a {spec.kind} model, not a text-to-image one; use its endpoint "
            "(flux-kontext-pro, flux-pro-1.0-fill) instead."
        )
    return spec


# Authentication runs first, so a caller without a key cannot probe for model names.
@by_name_router.post(
    "/v1/{name}",
    response_model=AsyncResponse,
    responses=SUBMIT_ERRORS,
    tags=["bfl"],
    dependencies=[Depends(authenticate), Depends(named_model)],
)
def by_model_name(
    name: str, inputs: ByNameInputs, services: ServicesDep, base: BaseUrlDep, caller: SubmitterDep
):
    """Generate on the loaded model (or ``--alias``) called ``name``, as ``/v1/flux-dev``
    does on a model chosen by kind. Fixed endpoint names never reach this route."""
    return _submit(name, inputs, services, base, caller, loras=lora_wants(inputs.loras))
