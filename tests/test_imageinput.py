"""The image-input boundary: what is fetched, decoded and refused, and why."""

from __future__ import annotations

import base64
import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from PIL import Image

from fluxserve.addresses import UrlPolicy, check_url
from fluxserve.errors import InvalidRequest
from fluxserve.images.inputs import ImageLimits, decode_image, fetch_url, read_reference

LIMITS = ImageLimits()
LOCAL = UrlPolicy(allowed_addresses=frozenset({"127.0.0.1"}))


def encoded(fmt: str, size=(96, 80), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, "red" if mode == "RGB" else 1).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_accepted_formats_decode(fmt):
    image = decode_image(encoded(fmt), "input_image", LIMITS)
    assert image.size == (96, 80)
    assert image.mode == "RGB"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (encoded("GIF"), "GIF; JPEG, PNG and WebP are accepted"),
        (encoded("PNG")[:200], "truncated or corrupt"),
        (b"not an image at all", "is not an image file"),
        (encoded("PNG", size=(32, 200)), "each side must be at least 64"),
        # 100 million pixels claimed by a 1-bit PNG of a few kilobytes: refused from the
        # header, before any pixel is decoded.
        (encoded("PNG", size=(10_000, 10_000), mode="1"), "at most 20000000 pixels"),
        # Past twice Pillow's own limit, Pillow refuses it while opening.
        (encoded("PNG", size=(15_000, 15_000), mode="1"), "claims too many pixels"),
    ],
)
def test_refusals_name_the_field_and_reason(data, reason):
    with pytest.raises(InvalidRequest) as refused:
        decode_image(data, "input_image", LIMITS)
    assert refused.value.field == "input_image"
    assert reason in refused.value.message


def test_byte_limit():
    with pytest.raises(InvalidRequest, match="larger than 1000 bytes"):
        decode_image(
            encoded("PNG", size=(400, 400)) + b"\0" * 2000, "image", ImageLimits(max_bytes=1000)
        )


def test_base64_and_data_uri():
    png = encoded("PNG")
    plain = base64.b64encode(png).decode()
    assert read_reference(plain, "image", LIMITS, UrlPolicy()) == png
    assert read_reference(f"data:image/png;base64,{plain}", "image", LIMITS, UrlPolicy()) == png
    with pytest.raises(InvalidRequest, match="must be base64"):
        read_reference("%%%not base64%%%", "image", LIMITS, UrlPolicy())
    with pytest.raises(InvalidRequest, match="data: URI must be base64"):
        read_reference("data:image/png,rawbytes", "image", LIMITS, UrlPolicy())


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/a.png", "loopback"),
        ("http://localhost:8000/a.png", "loopback"),
        ("http://10.1.2.3/a.png", "private network"),
        ("http://192.168.0.10/a.png", "private network"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::1]/a.png", "loopback"),
        ("http://0.0.0.0/a.png", "reserved"),
        ("ftp://example.com/a.png", "must be an http(s) URL"),
    ],
)
def test_urls_to_internal_addresses_are_refused(url, reason):
    with pytest.raises(InvalidRequest) as refused:
        check_url(url, "image_url", UrlPolicy())
    assert reason in refused.value.message
    assert refused.value.field == "image_url"


def test_private_addresses_allowed_when_the_operator_says_so():
    check_url("http://10.1.2.3/a.png", "image_url", UrlPolicy(allow_private=True))


@pytest.fixture
def image_server():
    png = encoded("PNG")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            if self.path == "/a.png":
                self.send_response(200)
                self.send_header("content-type", "image/png")
                self.end_headers()
                self.wfile.write(png)
            elif self.path == "/to-private":
                self.send_response(302)
                self.send_header("location", "http://10.0.0.1/a.png")
                self.end_headers()
            elif self.path == "/to-self":
                self.send_response(302)
                self.send_header("location", "/a.png")
                self.end_headers()
            else:
                self.send_response(404)
                self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", png
    server.shutdown()
    server.server_close()


def test_fetch_follows_checked_redirects(image_server):
    base, png = image_server
    assert fetch_url(f"{base}/a.png", "image_url", LIMITS, LOCAL) == png
    assert fetch_url(f"{base}/to-self", "image_url", LIMITS, LOCAL) == png


def test_redirect_to_a_private_address_is_refused(image_server):
    base, _ = image_server
    with pytest.raises(InvalidRequest, match="private network"):
        fetch_url(f"{base}/to-private", "image_url", LIMITS, LOCAL)


def test_fetch_refusals(image_server):
    base, _ = image_server
    with pytest.raises(InvalidRequest, match="loopback"):
        fetch_url(f"{base}/a.png", "image_url", LIMITS, UrlPolicy())
    with pytest.raises(InvalidRequest, match="HTTP 404"):
        fetch_url(f"{base}/missing.png", "image_url", LIMITS, LOCAL)
    with pytest.raises(InvalidRequest, match="larger than 100 bytes"):
        fetch_url(f"{base}/a.png", "image_url", ImageLimits(max_bytes=100), LOCAL)


def test_the_connection_goes_to_the_address_that_was_checked(image_server, monkeypatch):
    """DNS rebinding: the name is resolved once, and that checked address is the one
    connected to (with the original Host header); a second lookup never happens."""
    base, png = image_server
    port = base.rsplit(":", 1)[1]
    lookups = []

    def resolve_once(host: str) -> list[str]:
        lookups.append(host)
        # A first answer that passes the policy; a rebinding resolver would answer
        # differently the next time, which must not matter.
        return ["127.0.0.1"] if len(lookups) == 1 else ["10.0.0.1"]

    monkeypatch.setattr("fluxserve.addresses._resolve", resolve_once)
    seen_hosts = []
    real_send = httpx.Client.send

    def send(self, request, **kwargs):
        seen_hosts.append((request.url.host, request.headers["host"]))
        return real_send(self, request, **kwargs)

    monkeypatch.setattr(httpx.Client, "send", send)
    # "rebind.invalid" cannot resolve for real: only the checked address can be used.
    assert fetch_url(f"http://rebind.invalid:{port}/a.png", "image_url", LIMITS, LOCAL) == png
    assert lookups == ["rebind.invalid"]
    assert seen_hosts == [("127.0.0.1", f"rebind.invalid:{port}")]


def test_an_address_that_refuses_the_connection_falls_back_to_the_next(image_server, monkeypatch):
    """A name with several addresses (one server down, a dead IPv6 route): each checked
    address is tried in turn, in the resolver's order."""
    base, png = image_server
    port = base.rsplit(":", 1)[1]
    # Nothing listens on 127.0.0.2: its connection is refused.
    monkeypatch.setattr("fluxserve.addresses._resolve", lambda host: ["127.0.0.2", "127.0.0.1"])
    both = UrlPolicy(allowed_addresses=frozenset({"127.0.0.1", "127.0.0.2"}))
    assert fetch_url(f"http://two.invalid:{port}/a.png", "image_url", LIMITS, both) == png
    monkeypatch.setattr("fluxserve.addresses._resolve", lambda host: ["127.0.0.2"])
    with pytest.raises(InvalidRequest, match="could not be fetched"):
        fetch_url(f"http://two.invalid:{port}/a.png", "image_url", LIMITS, both)


def test_exif_rotation_is_applied():
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    Image.new("RGB", (120, 80), (200, 10, 10)).save(buffer, format="JPEG", exif=exif)
    image = decode_image(buffer.getvalue(), "image", LIMITS)
    assert image.size == (80, 120)


@pytest.mark.parametrize(
    "address",
    ["100.100.100.200", "100.64.0.1", "::ffff:127.0.0.1", "2002:7f00:1::1",
     "2002:a9fe:a9fe::1", "0.0.0.0"],
)  # fmt: skip
def test_non_global_and_wrapped_addresses_are_refused(address):
    assert UrlPolicy().refusal(address) is not None, address


def test_public_addresses_pass():
    assert UrlPolicy().refusal("93.184.215.14") is None
    assert UrlPolicy().refusal("2606:2800:21f:cb07:6820:80da:af6b:8b2c") is None


@pytest.mark.parametrize("url", ["http://example.com:99999/a.png", "http://example.com:abc/x"])
def test_bad_ports_are_refused_not_crashing(url):
    with pytest.raises(InvalidRequest, match="invalid port"):
        check_url(url, "image_url", UrlPolicy())


def test_a_host_idna_cannot_encode_is_refused_not_crashing():
    with pytest.raises(InvalidRequest, match="does not resolve"):
        check_url("http://" + "a" * 64 + ".com/x.png", "image_url", UrlPolicy())
