"""Local blob storage and its signed URLs, directly and through the app."""

from __future__ import annotations

import os
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from fluxserve.errors import StorageError
from fluxserve.storage.local import LocalStorage
from fluxserve.storage.signing import UrlSigner, load_or_create_secret
from tests.helpers import SMALL, poll_result


def test_secret_persists(tmp_path):
    path = tmp_path / "secret"
    assert load_or_create_secret(path) == load_or_create_secret(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_signature_checks():
    signer = UrlSigner(b"k" * 32)
    expires, sig = signer.sign("results/a/0.png", 60)
    assert signer.verify("results/a/0.png", expires, sig)
    assert not signer.verify("results/b/0.png", expires, sig)
    assert not signer.verify("results/a/0.png", expires + 1, sig)
    assert not signer.verify("results/a/0.png", expires, "0" * 64)
    past = int(time.time()) - 1
    assert not signer.verify("results/a/0.png", past, signer.signature("results/a/0.png", past))


@pytest.mark.parametrize("key", ["../x.png", "/etc/passwd", "results/../../x.png", "a b.png"])
def test_rejects_unsafe_keys(tmp_path, key):
    storage = LocalStorage(tmp_path / "blobs", tmp_path / "secret")
    with pytest.raises(StorageError):
        storage.put(key, b"x", "image/png")


def test_put_is_durable_before_it_returns(tmp_path, monkeypatch):
    """The blob's bytes, its directory entry and its new job folder's entry are all synced
    to disk before put() returns (the worker marks the job Ready only after that)."""
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))

    monkeypatch.setattr(os, "fsync", recording_fsync)
    root = tmp_path / "blobs"
    storage = LocalStorage(root, tmp_path / "secret")
    storage.put("results/j/0.png", b"data", "image/png")
    file_sync = next(i for i, p in enumerate(synced) if "/results/j/.tmp-" in p)
    assert synced.index(str(root / "results" / "j")) > file_sync  # the rename, after the data
    assert str(root / "results") in synced  # the new job folder's entry
    assert str(root) in synced  # the new results folder's entry
    assert sorted(p.name for p in (root / "results" / "j").iterdir()) == ["0.png"]


def test_failed_put_leaves_no_temporary_file(tmp_path, monkeypatch):
    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    storage = LocalStorage(tmp_path / "blobs", tmp_path / "secret")
    with pytest.raises(StorageError, match="No space left"):
        storage.put("results/j/0.png", b"data", "image/png")
    assert list((tmp_path / "blobs" / "results" / "j").iterdir()) == []


def test_put_get(tmp_path):
    storage = LocalStorage(tmp_path / "blobs", tmp_path / "secret")
    storage.put("results/j/0.png", b"data", "image/png")
    assert storage.get("results/j/0.png") == b"data"
    with pytest.raises(StorageError):
        storage.get("results/j/1.png")


def _ready_sample(client) -> str:
    job_id = client.post("/v1/flux-schnell", json={"seed": 3, **SMALL}).json()["id"]
    return poll_result(client, job_id)["result"]["sample"]


def test_tampered_and_expired_urls_are_forbidden(client):
    sample = _ready_sample(client)
    assert client.get(sample).status_code == 200
    parts = urlsplit(sample)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    flipped = query["sig"][:-1] + ("0" if query["sig"][-1] != "0" else "1")
    cases = {
        "bad signature": {"exp": query["exp"], "sig": flipped},
        "later expiry": {"exp": int(query["exp"]) + 3600, "sig": query["sig"]},
        "no signature": {"exp": query["exp"]},
    }
    for name, params in cases.items():
        response = client.get(parts.path, params=params)
        assert response.status_code == 403, name
        assert "expired or is not valid" in response.json()["detail"]
    other_key = parts.path.replace("-0.jpeg", "-1.jpeg")
    assert client.get(other_key, params=query).status_code == 403


def test_expired_url_is_forbidden(client):
    sample = _ready_sample(client)
    storage = client.app.state.services.storage
    key = urlsplit(sample).path.removeprefix("/files/")
    past = int(time.time()) - 5
    response = client.get(
        f"/files/{key}", params={"exp": past, "sig": storage.signer.signature(key, past)}
    )
    assert response.status_code == 403
