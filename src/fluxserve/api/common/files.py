"""Result images at HMAC-signed, expiring URLs."""

from __future__ import annotations

import time

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response

from fluxserve.api.deps import ServicesDep
from fluxserve.api.errors import error_body
from fluxserve.errors import StorageError
from fluxserve.storage.base import is_valid_key

router = APIRouter(tags=["files"])

CONTENT_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
FORBIDDEN = "This image link has expired or is not valid; ask for the result again for a fresh one."


@router.get("/files/{key:path}", include_in_schema=False)
def get_file(
    key: str, services: ServicesDep, exp: int = Query(0), sig: str = Query("")
) -> Response:
    """A result image, if the link's signature holds and it has not expired."""
    signer = getattr(services.storage, "signer", None)  # object stores link presigned URLs
    if signer is None or not is_valid_key(key) or not signer.verify(key, exp, sig):
        return JSONResponse(error_body(FORBIDDEN), status_code=403)
    try:
        data = services.storage.get(key)
    except StorageError:
        return JSONResponse(error_body("This image no longer exists."), status_code=404)
    media_type = CONTENT_TYPES.get(key.rsplit(".", 1)[-1], "application/octet-stream")
    max_age = max(0, exp - int(time.time()))  # no cache keeps it past the link's expiry
    headers = {"Cache-Control": f"private, max-age={max_age}"}
    return Response(data, media_type=media_type, headers=headers)
