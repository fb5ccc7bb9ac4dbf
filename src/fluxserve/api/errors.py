"""Errors -> HTTP status and body, per dialect: the only place that mapping lives.

- BFL and fal: 422s keep FastAPI's ``{"detail": [{"loc", "msg", "type"}]}`` shape, so a value
  rejected by a model's limits reads like one rejected by the wire schema. Other errors carry
  the text in ``detail`` (and ``message`` for BFL's clients; ``error_type`` for fal's).
- OpenAI: ``{"error": {"message", "type", "param", "code"}}``, and a bad parameter is a 400,
  as the OpenAI SDK expects.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from fluxserve.errors import (
    ConfigurationError,
    FluxserveError,
    Forbidden,
    InvalidRequest,
    JobNotFound,
    ModelLoadError,
    ModelNotAvailable,
    PaymentRequired,
    ServerBusy,
    StorageError,
    TooManyRequests,
    Unauthenticated,
)

logger = logging.getLogger(__name__)

STATUS_CODES: dict[type[FluxserveError], int] = {
    InvalidRequest: 422,
    ModelNotAvailable: 404,
    JobNotFound: 404,
    ModelLoadError: 503,
    ConfigurationError: 500,
    StorageError: 500,
    Unauthenticated: 401,
    TooManyRequests: 429,
    ServerBusy: 503,
    PaymentRequired: 402,
    Forbidden: 403,
}
ERROR_TYPES: dict[type[FluxserveError], str] = {
    InvalidRequest: "invalid_request",
    ModelNotAvailable: "model_not_available",
    JobNotFound: "not_found",
    ModelLoadError: "model_not_loaded",
    Unauthenticated: "unauthorized",
    TooManyRequests: "rate_limited",
    ServerBusy: "server_busy",
    PaymentRequired: "insufficient_credits",
    Forbidden: "forbidden",
}
# OpenAI's own codes for these, as its SDK and users know them.
OPENAI_CODES: dict[type[FluxserveError], str] = {
    Unauthenticated: "invalid_api_key",
    ServerBusy: "server_busy",
    TooManyRequests: "rate_limit_exceeded",
}
OPENAI_PREFIXES = ("/v1/images", "/v1/models")


# The domain's names for fields OpenAI's API calls otherwise.
OPENAI_FIELDS = {"num_images": "n"}


# -- The error bodies, as the OpenAPI document shows them ---------------------------------------


class ValidationIssue(BaseModel):
    """One rejected value: where it is (``loc``), why (``msg``) and the kind of error."""

    model_config = ConfigDict(extra="allow")  # pydantic adds ``ctx`` to some

    loc: list[str | int] = Field(description='Where the value is, e.g. ["body", "prompt"].')
    msg: str
    type: str
    input: Any = Field(None, description="The value received.")


class ValidationErrorBody(BaseModel):
    """A 422 on BFL and fal routes: FastAPI's shape, one entry per rejected value."""

    detail: list[ValidationIssue]


class BflError(BaseModel):
    """Any other BFL error: the text under both keys BFL's clients read."""

    detail: str
    message: str


class FalError(BaseModel):
    """Any other fal error; ``error_type`` is also sent as the X-Fal-Error-Type header."""

    detail: str
    error_type: str


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, or server_error for a 5xx.")
    param: str | None = Field(description="The parameter at fault, when there is one.")
    code: str | None


class OpenAIErrorBody(BaseModel):
    """Every OpenAI error, as the OpenAI SDK reads it."""

    error: OpenAIErrorDetail


RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.",
                               "schema": {"type": "integer"}}}  # fmt: skip
STATUS_MEANINGS: dict[int, str] = {
    400: "A parameter the caller can change is wrong.",
    401: "No API key, or one that is unknown or revoked.",
    402: "The job costs more credits than the API key has left.",
    403: "The caller may not do this.",
    404: "No such model, endpoint or request.",
    410: "The result was handed over once and not kept.",
    413: "The request body is too large.",
    422: "A value is missing or not allowed; the body names the field.",
    429: "The API key's limit is reached; Retry-After says when to retry.",
    500: "The job failed.",
    503: "The server is busy, shutting down or without its database for a moment; "
    "Retry-After says when to retry.",
    504: "The job did not end in time.",
}


def error_responses(dialect: str, *statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route of ``dialect`` that can answer ``statuses``: each
    with that dialect's error body (fal's 422 is either a rejected value or a refused
    job)."""
    bodies: dict[str, Any] = {"bfl": BflError, "fal": FalError, "openai": OpenAIErrorBody}
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        model = bodies[dialect]
        if status == 422 and dialect == "bfl":
            model = ValidationErrorBody
        response = {"model": model, "description": STATUS_MEANINGS[status]}
        if status == 422 and dialect == "fal":
            response["model"] = ValidationErrorBody | FalError
            response["description"] += " Or the job was refused: its prompt, or its LoRA."
        if status in (429, 503):
            response["headers"] = RETRY_AFTER
        responses[status] = response
    return responses


def dialect_of(path: str) -> str:
    if path.startswith(OPENAI_PREFIXES):
        return "openai"
    return "bfl" if path.startswith("/v1/") else "fal"


def status_code_for(exc: FluxserveError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return 500


def error_type_for(exc: FluxserveError) -> str:
    for cls in type(exc).__mro__:
        if cls in ERROR_TYPES:
            return ERROR_TYPES[cls]
    return "internal_error"


def error_body(message: str) -> dict[str, str]:
    """BFL's error body: the text under both keys its clients read."""
    return {"detail": message, "message": message}


def openai_error(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


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


def _field_name(loc: Any) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


async def handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 (a 400 in OpenAI's shape on OpenAI routes). Unlike FastAPI's own
    handler it never fails to render the rejected input (NaN, lone surrogates)."""
    assert isinstance(exc, RequestValidationError)
    errors = _json_safe(jsonable_encoder(exc.errors()))
    if dialect_of(request.url.path) == "openai":
        # A body that is not JSON has no parameter to name (its loc holds a byte offset).
        named = [
            (None if e["type"] == "json_invalid" else _field_name(e["loc"]), e) for e in errors
        ]
        message = "; ".join(
            f"{field}: {e['msg']}" if field else f"Invalid JSON body: {e['msg']}"
            for field, e in named
        )
        return openai_error(400, message, param=named[0][0], code=errors[0]["type"])
    return JSONResponse({"detail": errors}, status_code=422)


async def handle_fluxserve_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FluxserveError)
    response = _error_response(request, exc)
    if isinstance(exc, TooManyRequests):
        response.headers["Retry-After"] = str(exc.retry_after)
    if isinstance(exc, Unauthenticated):
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def _error_response(request: Request, exc: FluxserveError) -> JSONResponse:
    status = status_code_for(exc)
    message = exc.message
    if isinstance(exc, ServerBusy):  # load, not a fault: the client should read why
        logger.info("submit refused: %s", exc.message)
    elif status >= 500:
        logger.error("request failed: %s", exc.message)
        message = "Internal server error."
    dialect = dialect_of(request.url.path)
    if dialect == "openai":
        field = OPENAI_FIELDS.get(getattr(exc, "field", None), getattr(exc, "field", None))
        if isinstance(exc, InvalidRequest | ModelNotAvailable):
            status = 400  # the SDK's BadRequestError: a parameter the caller can change
        code = next((OPENAI_CODES[c] for c in type(exc).__mro__ if c in OPENAI_CODES), None)
        return openai_error(status, message, param=field, code=code or error_type_for(exc))
    if isinstance(exc, InvalidRequest):
        detail = [
            {"loc": ["body", exc.field], "msg": message, "type": "value_error", "input": exc.value}
        ]
        return JSONResponse({"detail": _json_safe(detail)}, status_code=422)
    if dialect == "fal":
        body = {"detail": message, "error_type": error_type_for(exc)}
        return JSONResponse(
            body, status_code=status, headers={"X-Fal-Error-Type": body["error_type"]}
        )
    return JSONResponse(error_body(message), status_code=status)


DATABASE_DOWN = "The job database is unavailable for a moment; retry shortly."
RETRY_AFTER_SECONDS = 5


async def handle_database_error(request: Request, exc: Exception) -> JSONResponse:
    """The job database is down or restarting: 503 with Retry-After, never a hang or a
    traceback. (Connections are checked before use, so the next request reconnects.)"""
    logger.warning("job database unavailable: %s", type(exc).__name__)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)}
    dialect = dialect_of(request.url.path)
    if dialect == "openai":
        response = openai_error(503, DATABASE_DOWN, code="database_unavailable")
        response.headers.update(headers)
        return response
    if dialect == "fal":
        body = {"detail": DATABASE_DOWN, "error_type": "database_unavailable"}
        headers["X-Fal-Error-Type"] = "database_unavailable"
        return JSONResponse(body, status_code=503, headers=headers)
    return JSONResponse(error_body(DATABASE_DOWN), status_code=503, headers=headers)


# FastAPI's answer to a body it cannot decode at all (invalid UTF-8): not in any dialect's
# documented errors, so it is answered as every other malformed body is.
UNPARSABLE_BODY = "There was an error parsing the body"


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == UNPARSABLE_BODY:
        error = {"type": "json_invalid", "loc": ("body",), "input": None,
                 "msg": "The body is not JSON: it is not valid UTF-8 text"}  # fmt: skip
        return await handle_validation_error(request, RequestValidationError([error]))
    return await http_exception_handler(request, exc)


def install_error_handlers(app: FastAPI) -> None:
    # Only the database being unreachable is a 503; other database errors are bugs (500).
    for unavailable in (OperationalError, InterfaceError, PoolTimeout):
        app.add_exception_handler(unavailable, handle_database_error)
    app.add_exception_handler(FluxserveError, handle_fluxserve_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_exception)
