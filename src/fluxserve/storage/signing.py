"""HMAC-signed, expiring URLs for blobs served by the API itself."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import tempfile
import time
from pathlib import Path


def load_or_create_secret(path: Path) -> bytes:
    """The server's signing secret; created once (mode 0600) and kept in the data dir so
    URLs stay valid across restarts."""
    if path.exists():
        return bytes.fromhex(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret-")  # mode 0600
    with os.fdopen(fd, "w") as handle:
        handle.write(secret.hex())
    # Another process may have won the race: keep the first secret written.
    with contextlib.suppress(FileExistsError):
        os.link(tmp, path)
    os.unlink(tmp)
    return bytes.fromhex(path.read_text().strip())


class UrlSigner:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def signature(self, key: str, expires: int) -> str:
        message = f"{key}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def sign(self, key: str, ttl_seconds: int) -> tuple[int, str]:
        expires = int(time.time()) + ttl_seconds
        return expires, self.signature(key, expires)

    def verify(self, key: str, expires: int, signature: str) -> bool:
        """True when the signature matches and the expiry is still in the future."""
        if expires < time.time() or not signature.isascii():
            return False  # compare_digest refuses non-ASCII text: it is no signature of ours
        return hmac.compare_digest(self.signature(key, expires), signature)
