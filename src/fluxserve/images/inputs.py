"""Image inputs from clients: base64, ``data:`` URIs and http(s) URLs, checked at the edge.

This is a security boundary. Everything here runs before a job is queued, so nothing that
is not a sane JPEG, PNG or WebP of bounded size reaches a worker:

- URLs are fetched only from public addresses (loopback, private, link-local (cloud
  metadata), multicast and reserved ranges are refused unless the operator allows private
  addresses), redirects are followed by hand so each hop is checked, and the body is read
  with a size cap and timeouts.
- Files are decoded to verify them: the format must be JPEG, PNG or WebP; the header's size
  is checked before any pixels are decoded (decompression bombs); a truncated file fails.

Every refusal is an InvalidRequest naming the field and the reason. Torch-free.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass, field
from typing import BinaryIO
from urllib.parse import urljoin

import httpx
from PIL import Image, ImageOps, UnidentifiedImageError

from fluxserve.addresses import UrlPolicy, check_url, pin_url
from fluxserve.errors import InvalidRequest

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
MAX_REDIRECTS = 3


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 20_000_000
    min_side: int = 64
    fetch_timeout: float = 15.0


def fetch_url(url: str, field_name: str, limits: ImageLimits, policy: UrlPolicy,
              sink: BinaryIO | None = None) -> bytes:  # fmt: skip
    """The bytes at ``url``, checking every redirect hop against ``policy``; with ``sink``
    they are written there as they arrive (a large file never sits in memory) and b"" is
    returned."""
    # trust_env off: an operator's HTTP(S)_PROXY must not carry these fetches elsewhere.
    with httpx.Client(
        timeout=limits.fetch_timeout, follow_redirects=False, trust_env=False
    ) as client:
        for _ in range(MAX_REDIRECTS + 1):
            addresses = check_url(url, field_name, policy)
            redirect = _fetch_from(client, url, addresses, field_name, limits, sink)
            if isinstance(redirect, bytes):
                return redirect
            url = redirect
    raise InvalidRequest(field_name, f"{field_name}: more than {MAX_REDIRECTS} redirects")


def _fetch_from(
    client: httpx.Client, url: str, addresses: list[str], field_name: str, limits: ImageLimits,
    sink: BinaryIO | None = None,
) -> bytes | str:  # fmt: skip
    """The body at ``url``, or the URL it redirects to. Each checked address is tried in
    turn while it cannot be connected to (a host with a dead IPv6 route, one server down)."""
    for n, address in enumerate(addresses):
        pinned, headers, extensions = pin_url(url, address)
        try:
            with client.stream("GET", pinned, headers=headers, extensions=extensions) as response:
                if response.is_redirect:
                    return urljoin(url, response.headers.get("location", ""))
                if response.status_code != 200:
                    raise InvalidRequest(
                        field_name,
                        f"{field_name}: fetching it answered HTTP {response.status_code}",
                    )
                length = response.headers.get("content-length", "")
                if length.isdigit() and int(length) > limits.max_bytes:  # before reading
                    raise InvalidRequest(
                        field_name, f"{field_name} is larger than {limits.max_bytes} bytes"
                    )
                return _read_capped(response, field_name, limits, sink)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            if n + 1 < len(addresses):
                continue  # nothing was sent: the next address is as good
            raise InvalidRequest(
                field_name, f"{field_name} could not be fetched ({type(exc).__name__})"
            ) from None
        except httpx.HTTPError as exc:
            raise InvalidRequest(
                field_name, f"{field_name} could not be fetched ({type(exc).__name__})"
            ) from None
    raise AssertionError("check_url returns at least one address")


def _read_capped(response: httpx.Response, field_name: str, limits: ImageLimits,
                 sink: BinaryIO | None = None) -> bytes:  # fmt: skip
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limits.max_bytes:
            raise InvalidRequest(
                field_name, f"{field_name} is larger than {limits.max_bytes} bytes"
            )
        if sink is not None:
            sink.write(chunk)
        else:
            chunks.append(chunk)
    return b"".join(chunks)


def read_reference(value: str, field_name: str, limits: ImageLimits, policy: UrlPolicy) -> bytes:
    """The file a client sent as base64, a data: URI or an http(s) URL."""
    if value.startswith(("http://", "https://")):
        return fetch_url(value, field_name, limits, policy)
    if value.startswith("data:"):
        header, sep, value = value.partition(",")
        if not sep or ";base64" not in header:
            raise InvalidRequest(field_name, f"{field_name}: a data: URI must be base64-encoded")
    if len(value) > limits.max_bytes * 4 // 3 + 4:
        raise InvalidRequest(field_name, f"{field_name} is larger than {limits.max_bytes} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(
            field_name, f"{field_name} must be base64, a data: URI or an http(s) URL"
        ) from None


def decode_image(data: bytes, field_name: str, limits: ImageLimits) -> Image.Image:
    """A verified, fully decoded RGB(A) image; InvalidRequest for anything else."""
    if len(data) > limits.max_bytes:
        raise InvalidRequest(field_name, f"{field_name} is larger than {limits.max_bytes} bytes")
    too_many = f"{field_name} claims too many pixels; at most {limits.max_pixels}"
    try:
        with warnings.catch_warnings():  # our own pixel limit below is the stricter one
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise InvalidRequest(field_name, too_many) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InvalidRequest(field_name, f"{field_name} is not an image file") from None
    if image.format not in ALLOWED_FORMATS:
        raise InvalidRequest(
            field_name, f"{field_name} is {image.format}; JPEG, PNG and WebP are accepted"
        )
    width, height = image.size
    # Checked from the header, before any pixel is decoded: a small file can claim a huge
    # image (a decompression bomb).
    if width * height > limits.max_pixels:
        raise InvalidRequest(
            field_name, f"{field_name} is {width}x{height}; at most {limits.max_pixels} pixels"
        )
    if min(width, height) < limits.min_side:
        raise InvalidRequest(
            field_name,
            f"{field_name} is {width}x{height}; each side must be at least {limits.min_side}",
        )
    try:
        image.load()
    except (OSError, SyntaxError, Image.DecompressionBombError, ValueError):
        raise InvalidRequest(field_name, f"{field_name} is truncated or corrupt") from None
    alpha = "A" in image.getbands() or "transparency" in image.info  # tRNS: palette PNGs
    # Phones store portrait photos sideways with an EXIF rotation tag: apply it, so the
    # edit sees the picture the way its owner does.
    image = ImageOps.exif_transpose(image)
    return image.convert("RGBA" if alpha else "RGB")


@dataclass(frozen=True)
class ImageReader:
    """Reads and verifies client images under one deployment's limits and URL policy."""

    limits: ImageLimits = field(default_factory=ImageLimits)
    policy: UrlPolicy = field(default_factory=UrlPolicy)

    def open(self, value: str, field_name: str) -> Image.Image:
        """An image sent as base64, a data: URI or an http(s) URL (fetched here: call
        it from a worker thread, never the event loop)."""
        return decode_image(read_reference(value, field_name, self.limits, self.policy),
                            field_name, self.limits)  # fmt: skip

    def open_bytes(self, data: bytes, field_name: str) -> Image.Image:
        """An image uploaded as a file (multipart)."""
        return decode_image(data, field_name, self.limits)
