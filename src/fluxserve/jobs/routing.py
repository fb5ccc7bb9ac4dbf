"""Which loaded model answers which endpoint name."""

from __future__ import annotations

from collections.abc import Callable

from fluxserve.errors import ConfigurationError, ModelNotAvailable
from fluxserve.specs import FLUX2_KINDS, ModelKind, ModelSpec

# fal's FLUX.2 [klein] ids below fal-ai/flux-2/: klein/4b, klein/4b/edit, klein/4b/base, ...
FAL_KLEIN_SUBPATHS = tuple(
    f"klein/{size}{base}{edit}"
    for size in ("4b", "9b") for base in ("", "/base") for edit in ("", "/edit")
)  # fmt: skip

# The kind of model each endpoint name stands for. The pro names are the hosted quality
# tier, served by a guidance-distilled (dev-kind) model unless the operator maps them
# elsewhere with --alias; the Kontext and Fill names need a model of that kind.
ENDPOINT_KINDS: dict[str, ModelKind] = {
    "flux-dev": ModelKind.DEV,
    "flux-schnell": ModelKind.SCHNELL,
    "flux-pro-1.1": ModelKind.DEV,
    "flux-pro": ModelKind.DEV,
    "flux-kontext-pro": ModelKind.KONTEXT,
    "flux-kontext-max": ModelKind.KONTEXT,
    "flux-pro-1.0-fill": ModelKind.FILL,
    "flux-pro-1.0-expand": ModelKind.FILL,
    # fal.ai endpoint ids
    "fal-ai/flux/schnell": ModelKind.SCHNELL,
    "fal-ai/flux/dev": ModelKind.DEV,
    "fal-ai/flux/dev/image-to-image": ModelKind.DEV,
    "fal-ai/flux-1/schnell": ModelKind.SCHNELL,
    "fal-ai/flux-1/dev": ModelKind.DEV,
    "fal-ai/flux-pro/v1.1": ModelKind.DEV,
    # Ultra: a FLUX.2 model when one is loaded, else a FLUX.1 [dev]-kind one (route()).
    "flux-pro-1.1-ultra": ModelKind.DEV,
    "flux-pro-1.1-ultra-finetuned": ModelKind.DEV,
    "flux-pro-1.0-fill-finetuned": ModelKind.FILL,
    "fal-ai/flux-pro/v1.1-ultra": ModelKind.DEV,
    "fal-ai/flux-lora": ModelKind.DEV,
    "fal-ai/flux-lora/image-to-image": ModelKind.DEV,
    "fal-ai/flux/krea": ModelKind.KREA,
    "fal-ai/flux/krea/image-to-image": ModelKind.KREA,
    "fal-ai/flux-1/krea": ModelKind.KREA,
    "fal-ai/flux-kontext/dev": ModelKind.KONTEXT,
    "fal-ai/flux-pro/kontext": ModelKind.KONTEXT,
    "fal-ai/flux-pro/kontext/max": ModelKind.KONTEXT,
    "fal-ai/flux-pro/kontext/multi": ModelKind.KONTEXT,
    "fal-ai/flux-pro/kontext/max/multi": ModelKind.KONTEXT,
    "fal-ai/flux-pro/kontext/text-to-image": ModelKind.KONTEXT,
    "fal-ai/flux-pro/kontext/max/text-to-image": ModelKind.KONTEXT,
    "fal-ai/flux-pro/v1/fill": ModelKind.FILL,
    # FLUX.2. The hosted pro, max and flex are served by [dev] (else the largest FLUX.2
    # model loaded); the [klein] names want that [klein] size.
    **dict.fromkeys(
        [
            "flux-2-pro",
            "flux-2-pro-preview",
            "flux-2-max",
            "flux-2-flex",
            "fal-ai/flux-2",
            "fal-ai/flux-2/edit",
            "fal-ai/flux-2-pro",
            "fal-ai/flux-2-pro/edit",
            "fal-ai/flux-2-flex",
            "fal-ai/flux-2-flex/edit",
            "fal-ai/flux-2-max",
            "fal-ai/flux-2-max/edit",
            "fal-ai/flux-2/lora",
            "fal-ai/flux-2/lora/edit",
        ],
        ModelKind.FLUX2_DEV,
    ),  # fmt: skip
    **dict.fromkeys(
        [
            "flux-2-klein-4b",
            "flux-2-klein-9b",
            "flux-2-klein-9b-preview",
            *(
                f"fal-ai/flux-2/klein/{size}{base}{edit}"
                for size in ("4b", "9b")
                for base in ("", "/base")
                for edit in ("", "/edit")
            ),
        ],
        ModelKind.FLUX2_KLEIN,
    ),  # fmt: skip
}
# The [klein] size each [klein] endpoint wants; fal's ``/base`` ids want the undistilled model.
KLEIN_SIZES: dict[str, str] = {
    name: "9b" if "9b" in name else "4b"
    for name, kind in ENDPOINT_KINDS.items()
    if kind is ModelKind.FLUX2_KLEIN
}
WANTS_BASE = frozenset(name for name in KLEIN_SIZES if "/base" in name)
# Endpoints a FLUX.2 model serves when no model of their own kind is loaded: the
# Kontext edits (FLUX.2 edits natively) and the FLUX.2 [dev]-kind names.
FLUX2_STANDS_IN = frozenset(
    name for name, kind in ENDPOINT_KINDS.items()
    if kind in (ModelKind.KONTEXT, ModelKind.FLUX2_DEV)
)  # fmt: skip
# Kinds the tiny test model stands in for when no model of the kind is loaded.
TEST_STANDS_IN_FOR = (ModelKind.DEV, ModelKind.SCHNELL, ModelKind.KREA, None)
ULTRA_ENDPOINTS = frozenset(
    {"flux-pro-1.1-ultra", "flux-pro-1.1-ultra-finetuned", "fal-ai/flux-pro/v1.1-ultra"}
)
KIND_EXAMPLES: dict[ModelKind, str] = {
    ModelKind.KONTEXT: "a Kontext model such as flux-kontext-dev (or tiny-kontext)",
    ModelKind.FILL: "a Fill model such as flux-fill-dev (or tiny-fill)",
    ModelKind.FLUX2_KLEIN: "a FLUX.2 [klein] model such as flux2-klein-4b (or tiny-flux2)",
    ModelKind.FLUX2_DEV: "a FLUX.2 model such as flux2-dev or flux2-klein-4b (or tiny-flux2-dev)",
}


class ModelRouter:
    """``models``: the loaded models; or, with ``learn`` (an API replica of a cluster
    started without --model), whatever ``learn()`` says the live workers serve now."""

    def __init__(
        self,
        models: dict[str, ModelSpec],
        aliases: dict[str, str] | None = None,
        learn: Callable[[], dict[str, ModelSpec]] | None = None,
    ) -> None:
        self._loaded = models
        self._learn = learn
        self.aliases = dict(aliases or {})
        if learn is not None:  # workers come and go: an alias to none routes nowhere yet
            return
        for name, target in self.aliases.items():
            if target not in models:
                raise ConfigurationError(
                    f"--alias {name}={target} points at a model that is not loaded; "
                    f"loaded: {', '.join(models)}"
                )

    @property
    def models(self) -> dict[str, ModelSpec]:
        return self._loaded if self._learn is None else self._learn()

    @property
    def learns(self) -> bool:
        """Whether the models come from the workers table (else from --model)."""
        return self._learn is not None

    def route(self, endpoint: str, raw: bool = False) -> ModelSpec:
        """The spec of the model serving ``endpoint``; ModelNotAvailable when none does.

        Order: an operator alias, a model of that name, a model of the endpoint's kind,
        then (text-to-image endpoints only) the tiny test model. FLUX.2: a [klein] name
        wants that [klein] size; the other FLUX.2 names (and Kontext's, when no Kontext
        model is loaded) take [dev], else the largest FLUX.2 model; real weights before
        tiny ones. Ultra takes a FLUX.2 model, else a FLUX.1 [dev]-kind one; with ``raw``,
        FLUX.1 Krea [dev] when it is loaded.
        """
        models = self.models
        if endpoint in self.aliases and self.aliases[endpoint] in models:
            return models[self.aliases[endpoint]]
        if endpoint in models:
            return models[endpoint]
        kind = ENDPOINT_KINDS.get(endpoint)
        if endpoint in ULTRA_ENDPOINTS:
            krea = self.first_of_kind(ModelKind.KREA) if raw else None
            found = krea or self.ultra_model()
        elif kind is ModelKind.FLUX2_KLEIN:
            found = self._klein(KLEIN_SIZES[endpoint], endpoint in WANTS_BASE)
        elif kind is ModelKind.FLUX2_DEV:
            found = self.largest_flux2()
        else:
            wanted = [kind, ModelKind.TEST] if kind in TEST_STANDS_IN_FOR else [kind]
            found = self.first_of_kind(*wanted)
        if found is None and endpoint in FLUX2_STANDS_IN:
            found = self.largest_flux2()
        if found is not None:
            return found
        needs = f" (it needs {KIND_EXAMPLES[kind]})" if kind in KIND_EXAMPLES else ""
        if self.learns:
            raise ModelNotAvailable(
                f"No live worker serves {endpoint}{needs}; the workers serve "
                f"{', '.join(models) or 'nothing yet'}. Start a worker with a model for "
                f"{endpoint}, or map the endpoint with --alias {endpoint}=MODEL."
            )
        raise ModelNotAvailable(
            f"No loaded model serves {endpoint}{needs}; this server has "
            f"{', '.join(models)}. Start it with a model for {endpoint}, or map the "
            f"endpoint with --alias {endpoint}=MODEL."
        )

    def first_of_kind(self, *kinds: ModelKind | None) -> ModelSpec | None:
        """The first loaded model of the first of ``kinds`` that has one."""
        for kind in kinds:
            for spec in self.models.values():
                if kind is not None and spec.kind is kind:
                    return spec
        return None

    def _klein(self, size: str, base: bool) -> ModelSpec | None:
        """The [klein] model of ``size`` (distilled first, or base first for fal's
        ``/base`` ids); a tiny [klein] stands in when none of that size is loaded."""
        kleins = [s for s in self.models.values() if s.kind is ModelKind.FLUX2_KLEIN]
        sized = [s for s in kleins if s.size_class == size and not s.random_weights]
        sized.sort(key=lambda s: s.uses_guidance != base)  # stable: load order breaks ties
        stand_ins = [s for s in kleins if s.random_weights]
        return next(iter(sized + stand_ins), None)

    def largest_flux2(self) -> ModelSpec | None:
        """A real FLUX.2 model before a tiny one; of those, [dev] first, then the one
        with the most parameters."""
        flux2 = [s for s in self.models.values() if s.kind in FLUX2_KINDS]
        dev = ModelKind.FLUX2_DEV
        flux2.sort(key=lambda s: (s.random_weights, s.kind is not dev, -s.parameters_b))
        return next(iter(flux2), None)

    def ultra_model(self) -> ModelSpec | None:
        """Ultra's model: FLUX.2 (4 MP natively) before FLUX.1 [dev], then Krea; real
        weights before tiny ones."""
        fits = (ModelKind.DEV, ModelKind.TEST, ModelKind.KREA)
        ultra = [s for s in self.models.values() if s.is_flux2 or s.kind in fits]
        ultra.sort(key=lambda s: (s.random_weights, not s.is_flux2, s.kind is ModelKind.KREA,
                                  -s.parameters_b))  # fmt: skip
        return next(iter(ultra), None)

    def table(self) -> dict[str, str | None]:
        """Every known endpoint with the model that serves it (None: not served)."""
        names = [*ENDPOINT_KINDS, *(a for a in self.aliases if a not in ENDPOINT_KINDS)]
        table: dict[str, str | None] = {}
        for name in names:
            try:
                table[name] = self.route(name).name
            except ModelNotAvailable:
                table[name] = None
        return table
