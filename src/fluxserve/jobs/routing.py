"""Which loaded model answers which endpoint name."""

from __future__ import annotations

from fluxserve.errors import ConfigurationError, ModelNotAvailable
from fluxserve.specs import ModelKind, ModelSpec

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
    "fal-ai/flux-kontext/dev": ModelKind.KONTEXT,
    "fal-ai/flux-pro/kontext": ModelKind.KONTEXT,
    "fal-ai/flux-pro/kontext/max": ModelKind.KONTEXT,
    "fal-ai/flux-pro/kontext/multi": ModelKind.KONTEXT,
    "fal-ai/flux-pro/kontext/max/multi": ModelKind.KONTEXT,
    "fal-ai/flux-pro/kontext/text-to-image": ModelKind.KONTEXT,
    "fal-ai/flux-pro/kontext/max/text-to-image": ModelKind.KONTEXT,
    "fal-ai/flux-pro/v1/fill": ModelKind.FILL,
}
# Kinds the tiny test model stands in for when no model of the kind is loaded.
TEST_STANDS_IN_FOR = (ModelKind.DEV, ModelKind.SCHNELL, None)
KIND_EXAMPLES: dict[ModelKind, str] = {
    ModelKind.KONTEXT: "a Kontext model such as flux-kontext-dev (or tiny-kontext)",
    ModelKind.FILL: "a Fill model such as flux-fill-dev (or tiny-fill)",
}


class ModelRouter:
    def __init__(self, models: dict[str, ModelSpec], aliases: dict[str, str] | None = None):
        self.models = models
        self.aliases = dict(aliases or {})
        for name, target in self.aliases.items():
            if target not in models:
                raise ConfigurationError(
                    f"--alias {name}={target} points at a model that is not loaded; "
                    f"loaded: {', '.join(models)}"
                )

    def route(self, endpoint: str) -> ModelSpec:
        """The spec of the model serving ``endpoint``; ModelNotAvailable when none does.

        Order: an operator alias, a model of that name, a model of the endpoint's kind,
        then (text-to-image endpoints only) the tiny test model.
        """
        if endpoint in self.aliases:
            return self.models[self.aliases[endpoint]]
        if endpoint in self.models:
            return self.models[endpoint]
        kind = ENDPOINT_KINDS.get(endpoint)
        wanted = [kind, ModelKind.TEST] if kind in TEST_STANDS_IN_FOR else [kind]
        found = self.first_of_kind(*wanted)
        if found is not None:
            return found
        needs = f" (it needs {KIND_EXAMPLES[kind]})" if kind in KIND_EXAMPLES else ""
        raise ModelNotAvailable(
            f"No loaded model serves {endpoint}{needs}; this server has "
            f"{', '.join(self.models)}. Start it with a model for {endpoint}, or map the "
            f"endpoint with --alias {endpoint}=MODEL."
        )

    def first_of_kind(self, *kinds: ModelKind | None) -> ModelSpec | None:
        """The first loaded model of the first of ``kinds`` that has one."""
        for kind in kinds:
            for spec in self.models.values():
                if kind is not None and spec.kind is kind:
                    return spec
        return None

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
