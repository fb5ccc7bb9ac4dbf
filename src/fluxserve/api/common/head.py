"""HEAD on the probes and the result links, answered as GET without the body.

Load balancers and uptime checkers probe with HEAD, and some link checkers test an image
link so. Only these paths: elsewhere a GET may change something (fal's ``sync_mode`` result
is handed over once), and a HEAD must not.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEAD_PATHS = ("/healthz", "/readyz")
HEAD_PREFIXES = ("/files/",)


def answers_head(path: str) -> bool:
    return path in HEAD_PATHS or path.startswith(HEAD_PREFIXES)


class HeadAsGet:
    """ASGI middleware: a HEAD on ``answers_head`` paths runs the GET route, and its
    status and headers (Content-Length included, as RFC 9110 allows) go back without the
    body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or not answers_head(scope["path"]):
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return  # a chunk of the body: dropped
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)
