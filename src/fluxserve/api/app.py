"""create_app: the FastAPI application and its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from fluxserve import __version__
from fluxserve.api.bfl import convert as bfl_convert
from fluxserve.api.bfl.router import by_name_router
from fluxserve.api.bfl.router import router as bfl_router
from fluxserve.api.common.files import router as files_router
from fluxserve.api.common.head import HeadAsGet
from fluxserve.api.common.health import router as health_router
from fluxserve.api.common.hosts import AllowedHosts
from fluxserve.api.common.metrics import install_metrics
from fluxserve.api.errors import install_error_handlers
from fluxserve.api.fal import convert as fal_convert
from fluxserve.api.fal.router import router as fal_router
from fluxserve.api.openai.router import router as openai_router
from fluxserve.api.openapi import install_openapi
from fluxserve.api.playground.router import router as playground_router
from fluxserve.bootstrap import Services, build_services
from fluxserve.config import Settings


def create_app(settings: Settings, services: Services | None = None) -> FastAPI:
    """The app; its lifespan starts the workers and stops them (after their current job)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services.start()
        try:
            yield
        finally:
            app.state.services.stop()

    app = FastAPI(
        title="fluxserve",
        version=__version__,
        description="Self-hosted FLUX image generation behind the Black Forest Labs, fal.ai and "
        "OpenAI Images APIs.",
        lifespan=lifespan,
    )
    services = services if services is not None else build_services(settings)
    # Each dialect builds the webhook bodies of the jobs submitted through it.
    services.register_webhook_body("bfl", bfl_convert.webhook_body)
    services.register_webhook_body("fal", fal_convert.webhook_body)
    app.state.services = services
    install_error_handlers(app)
    app.add_middleware(HeadAsGet)  # HEAD on /healthz, /readyz and /files/...
    if services.settings.allowed_hosts:
        app.add_middleware(AllowedHosts, allowed_hosts=services.settings.allowed_hosts)
    app.include_router(health_router)
    install_metrics(app)  # GET /metrics
    app.include_router(bfl_router)
    app.include_router(files_router)
    app.include_router(openai_router)
    app.include_router(fal_router)
    app.include_router(playground_router)
    app.include_router(by_name_router)  # last: its POST /v1/{name} yields to fixed routes
    install_openapi(app, services.settings.max_prompt_chars)
    return app
