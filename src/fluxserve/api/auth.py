"""Who is calling: the API key of a request, in any of the three dialects' headers.

BFL clients send ``x-key: KEY``, fal's ``Authorization: Key KEY`` and OpenAI's
``Authorization: Bearer KEY``; every route accepts all three, so one key works with any
client. With keys off (``--auth off``, or a loopback ``--host``) every caller is the same
anonymous owner.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request

from fluxserve.bootstrap import Services
from fluxserve.errors import InvalidRequest, Unauthenticated
from fluxserve.jobs.access import ApiKey, owner_of
from fluxserve.jobs.service import Submission

MAX_IDEMPOTENCY_KEY = 200
NO_KEY = (
    "Not authenticated: send an API key as x-key: KEY, Authorization: Key KEY or "
    "Authorization: Bearer KEY."
)
BAD_KEY = "Invalid API key: it is unknown or was revoked."


def key_from_headers(request: Request) -> str | None:
    if secret := request.headers.get("x-key"):
        return secret.strip()
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() in ("key", "bearer") and credentials.strip():
        return credentials.strip()
    return None


async def authenticate(request: Request) -> ApiKey | None:
    """The caller's key; None when keys are off. Unauthenticated (401) otherwise."""
    services: Services = request.app.state.services
    if not services.settings.auth_required:
        return None
    secret = key_from_headers(request)
    if secret is None:
        raise Unauthenticated(NO_KEY)
    key = await services.jobs.read(services.keys.find, secret)
    if key is None:
        raise Unauthenticated(BAD_KEY)
    return key


CallerDep = Annotated[ApiKey | None, Depends(authenticate)]


async def idempotency_key(
    value: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> str | None:
    if value is not None and not 1 <= len(value) <= MAX_IDEMPOTENCY_KEY:
        raise InvalidRequest(
            "Idempotency-Key",
            f"the Idempotency-Key header takes 1 to {MAX_IDEMPOTENCY_KEY} characters",
            value,
        )
    return value


IdempotencyDep = Annotated[str | None, Depends(idempotency_key)]


async def submitter(request: Request, key: CallerDep, idempotency: IdempotencyDep) -> Submission:
    """Who submits and with which Idempotency-Key; a dialect adds its webhook.

    The limits are checked here, before the route fetches and decodes any input image: a
    client past its limit (429) or a full server (503) costs two counts. A retry whose
    Idempotency-Key is known is let through to get its first job back.
    """
    services: Services = request.app.state.services
    jobs = services.jobs
    replay = idempotency is not None and (
        await jobs.read(jobs.store.find_idempotent, owner_of(key), idempotency)
    )
    if not replay and jobs.admission is not None:
        await jobs.read(jobs.admission.check, key)
    return Submission(key=key, idempotency_key=idempotency)


SubmitterDep = Annotated[Submission, Depends(submitter)]


def abandoned(request: Request, caller: Submission) -> Callable[[], Awaitable[bool]] | None:
    """What tells a synchronous route that its client went away (and its job may be
    cancelled): nothing when the client sent an Idempotency-Key, since its retry wants
    the same job back, finished."""
    return None if caller.idempotency_key is not None else request.is_disconnected
