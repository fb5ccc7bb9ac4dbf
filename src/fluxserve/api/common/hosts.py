"""--allowed-hosts: requests must name this server by one of its names (the Host header).

Links in answers (polling URLs, signed image URLs, webhook bodies) are built from the
request's Host when --public-url is unset; without this check a client sending
``Host: evil.example`` gets links to evil.example back, and so do the users it shares them
with. Starlette's TrustedHostMiddleware does the check. The probes and the metrics make no
links and are asked for by address (a load balancer's or Kubernetes' health check, a
Prometheus scrape), so they answer whatever the Host.
"""

from __future__ import annotations

from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

ANY_HOST_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class AllowedHosts:
    """TrustedHostMiddleware for every path but ``ANY_HOST_PATHS``; another Host gets 400."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        self.checked = TrustedHostMiddleware(app, allowed_hosts=allowed_hosts, www_redirect=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in ANY_HOST_PATHS:
            await self.app(scope, receive, send)
        else:
            await self.checked(scope, receive, send)
