"""FluxserveError -> HTTP status and body: the only place that mapping lives.

422s keep FastAPI's ``{"detail": [{"loc", "msg", "type"}]}`` shape, so a value rejected by
a model's limits reads like one rejected by the wire schema. Other errors carry the text in
both ``detail`` and ``message``, the two keys BFL's clients read.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from fluxserve.errors import (
    FluxserveError,
    InvalidRequest,
    JobNotFound,
    ModelLoadError,
    ModelNotAvailable,
    StorageError,
)

logger = logging.getLogger(__name__)

STATUS_CODES: dict[type[FluxserveError], int] = {
    InvalidRequest: 422,
    ModelNotAvailable: 404,
    JobNotFound: 404,
    ModelLoadError: 503,
    StorageError: 500,
}


def status_code_for(exc: FluxserveError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return 500


def error_body(message: str) -> dict[str, str]:
    return {"detail": message, "message": message}


async def handle_fluxserve_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FluxserveError)
    if isinstance(exc, InvalidRequest):
        detail = [
            {
                "loc": ["body", exc.field],
                "msg": exc.message,
                "type": "value_error",
                "input": exc.value,
            }
        ]
        return JSONResponse({"detail": detail}, status_code=422)
    status = status_code_for(exc)
    if status >= 500:
        logger.error("request failed: %s", exc.message)
        return JSONResponse(error_body("Internal server error."), status_code=status)
    return JSONResponse(error_body(exc.message), status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(FluxserveError, handle_fluxserve_error)
