"""The address guard: which hosts the server may connect to for a client's URL.

Image URLs, webhook receivers (and, later, LoRA sources) are fetched by the server, so a
client could aim them at this machine, the private network or a cloud metadata service.
Every such URL passes here: its host is resolved once, every address is judged by the
operator's ``UrlPolicy``, and the connection is pinned to a checked address (``pin_url``)
so a DNS answer that changes between check and connect cannot redirect it. Torch-free.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from fluxserve.errors import InvalidRequest


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
