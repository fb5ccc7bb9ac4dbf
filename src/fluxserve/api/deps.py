"""Request-scoped access to the services and settings the app was built with.

The dependencies are ``async def`` although they never await: FastAPI runs a plain ``def``
dependency in the thread pool, and that hop costs more than the work they do.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from fluxserve.bootstrap import Services


async def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


async def base_url(request: Request) -> str:
    """Where clients reach this server: the configured public URL, else the request's host."""
    services: Services = request.app.state.services
    configured = services.settings.public_url
    return (configured or str(request.base_url)).rstrip("/")


BaseUrlDep = Annotated[str, Depends(base_url)]
