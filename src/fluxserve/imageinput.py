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
import ipaddress
import socket
import warnings
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx
from PIL import Image, ImageOps, UnidentifiedImageError

from fluxserve.errors import InvalidRequest

ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
MAX_REDIRECTS = 3


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 20_000_000
    min_side: int = 64
    fetch_timeout: float = 15.0


@dataclass(frozen=True)
class UrlPolicy:
    """Which addresses image URLs may point at."""

    allow_private: bool = False
    # Addresses allowed even when private ones are not (tests, a known internal bucket).
    allowed_addresses: frozenset[str] = field(default_factory=frozenset)

    def refusal(self, address: str) -> str | None:
        """Why ``address`` may not be fetched, or None when it may."""
        if self.allow_private or address in self.allowed_addresses:
            return None
        ip = ipaddress.ip_address(address)
        if isinstance(ip, ipaddress.IPv6Address):
            # An IPv4 address carried inside IPv6 (mapped, 6to4, Teredo) is judged as itself.
            embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
            if embedded is not None:
                return self.refusal(str(embedded))
        if ip.is_loopback:
            return "it points at this machine (loopback)"
        if ip.is_link_local:
            return "it points at a link-local address (such as a cloud metadata service)"
        if ip.is_multicast or ip.is_reserved or ip.is_unspecified:
            return "it points at a reserved address"
        if ip.is_private or not ip.is_global:  # also 100.64/10 (CGNAT, some cloud metadata)
            return "it points at a private network address"
        return None


def _resolve(host: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):  # UnicodeError: a label IDNA cannot encode
        return []
    # The resolver's order (it prefers what this host can reach), without repeats.
    return list(dict.fromkeys(info[4][0] for info in infos))


class AddressRefused(Exception):
    """A host that does not resolve, or resolves to an address the policy refuses."""

    def __init__(self, host: str, reason: str | None = None) -> None:
        super().__init__(reason or f"the host {host} does not resolve")
        self.host = host
        self.reason = reason  # None: the host does not resolve

    @property
    def unresolved(self) -> bool:
        return self.reason is None


def allowed_addresses(host: str, policy: UrlPolicy) -> list[str]:
    """The addresses to connect to for ``host``, in the resolver's order: it is resolved
    once, and refused (AddressRefused) when it does not resolve or any of its addresses is
    refused by ``policy``. Shared by image fetches and webhook deliveries."""
    addresses = _resolve(host)
    if not addresses:
        raise AddressRefused(host)
    for address in addresses:
        reason = policy.refusal(address)
        if reason is not None:
            raise AddressRefused(host, reason)
    return addresses


def allowed_address(host: str, policy: UrlPolicy) -> str:
    """The first of ``allowed_addresses``."""
    return allowed_addresses(host, policy)[0]


def check_url(url: str, field_name: str, policy: UrlPolicy) -> list[str]:
    """The addresses to fetch ``url`` from, in order; InvalidRequest when the URL is not
    http(s) or its host resolves to any refused address."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number 0-65535)
    except ValueError:
        raise InvalidRequest(field_name, f"{field_name} has an invalid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(
            field_name, f"{field_name} must be an http(s) URL, base64 or a data: URI"
        )
    try:
        return allowed_addresses(parts.hostname, policy)
    except AddressRefused as refused:
        if refused.unresolved:
            raise InvalidRequest(
                field_name, f"{field_name}: the host {parts.hostname} does not resolve"
            ) from None
        raise InvalidRequest(field_name, f"{field_name} is refused: {refused.reason}") from None


def pin_url(url: str, address: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """``url`` aimed at the checked ``address``, with the Host header and TLS server name
    of the original host: the connection goes where the check looked, so a DNS answer that
    changes between check and connect (DNS rebinding) cannot redirect it."""
    parts = urlsplit(url)
    # Headers and the TLS server name are ASCII: an internationalised name goes as punycode.
    hostname = (parts.hostname or "").encode("idna").decode("ascii")
    host = f"[{address}]" if ":" in address else address
    netloc = f"{host}:{parts.port}" if parts.port else host
    host_header = f"{hostname}:{parts.port}" if parts.port else hostname
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    return pinned, {"Host": host_header}, {"sni_hostname": hostname}


def fetch_url(url: str, field_name: str, limits: ImageLimits, policy: UrlPolicy) -> bytes:
    """The bytes at ``url``, checking every redirect hop against ``policy``."""
    # trust_env off: an operator's HTTP(S)_PROXY must not carry these fetches elsewhere.
    with httpx.Client(
        timeout=limits.fetch_timeout, follow_redirects=False, trust_env=False
    ) as client:
        for _ in range(MAX_REDIRECTS + 1):
            addresses = check_url(url, field_name, policy)
            redirect = _fetch_from(client, url, addresses, field_name, limits)
            if isinstance(redirect, bytes):
                return redirect
            url = redirect
    raise InvalidRequest(field_name, f"{field_name}: more than {MAX_REDIRECTS} redirects")


def _fetch_from(
    client: httpx.Client, url: str, addresses: list[str], field_name: str, limits: ImageLimits
) -> bytes | str:
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
                return _read_capped(response, field_name, limits)
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


def _read_capped(response: httpx.Response, field_name: str, limits: ImageLimits) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > limits.max_bytes:
            raise InvalidRequest(
                field_name, f"{field_name} is larger than {limits.max_bytes} bytes"
            )
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
