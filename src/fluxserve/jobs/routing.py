"""Which loaded model answers which endpoint name."""

from __future__ import annotations

from fluxserve.errors import ConfigurationError, ModelNotAvailable
from fluxserve.specs import ModelKind, ModelSpec

# The kind of model each text-to-image endpoint name stands for. The pro names are the
# hosted quality tier, served by a guidance-distilled (dev-kind) model unless the operator
# maps them elsewhere with --alias.
ENDPOINT_KINDS: dict[str, ModelKind] = {
    "flux-dev": ModelKind.DEV,
    "flux-schnell": ModelKind.SCHNELL,
    "flux-pro-1.1": ModelKind.DEV,
    "flux-pro": ModelKind.DEV,
    # fal.ai endpoint ids
    "fal-ai/flux/schnell": ModelKind.SCHNELL,
    "fal-ai/flux/dev": ModelKind.DEV,
    "fal-ai/flux-1/schnell": ModelKind.SCHNELL,
    "fal-ai/flux-1/dev": ModelKind.DEV,
    "fal-ai/flux-pro/v1.1": ModelKind.DEV,
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
        then the tiny test model, which answers every text-to-image endpoint.
        """
        if endpoint in self.aliases:
            return self.models[self.aliases[endpoint]]
        if endpoint in self.models:
            return self.models[endpoint]
        kind = ENDPOINT_KINDS.get(endpoint)
        for wanted in (kind, ModelKind.TEST):
            for spec in self.models.values():
                if wanted is not None and spec.kind is wanted:
                    return spec
        raise ModelNotAvailable(
            f"No loaded model serves {endpoint}; this server has {', '.join(self.models)}. "
            f"Start it with a model for {endpoint}, or map the endpoint with "
            f"--alias {endpoint}=MODEL."
        )

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
