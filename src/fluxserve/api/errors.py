"""FluxserveError -> HTTP status and body: the only place that mapping lives.

422s keep FastAPI's ``{"detail": [{"loc", "msg", "type"}]}`` shape, so a value rejected by
a model's limits reads like one rejected by the wire schema. Other errors carry the text in
both ``detail`` and ``message``, the two keys BFL's clients read.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
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


def _json_safe(value: Any) -> Any:
    """``value`` with what JSON cannot carry (NaN, Infinity, lone surrogates) made text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_json_safe(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


async def handle_validation_error(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, except that it never fails to render the rejected input: FastAPI's
    own handler answers 500 when the input was NaN or held a lone surrogate."""
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": _json_safe(jsonable_encoder(exc.errors()))}, status_code=422)


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
    app.add_exception_handler(RequestValidationError, handle_validation_error)
