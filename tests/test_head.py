"""HEAD answers like GET without a body on the probes and the signed result links (load
balancers, uptime checkers and link checkers use it)."""

from __future__ import annotations

from tests.helpers import poll_result

SAME_HEADERS = ("content-type", "content-length", "cache-control")


def assert_head_like_get(client, url: str, status: int) -> None:
    got = client.get(url)
    head = client.head(url)
    assert (head.status_code, got.status_code) == (status, status)
    assert head.content == b""
    assert got.content  # GET has a body; HEAD says how long it is
    for name in SAME_HEADERS:
        assert head.headers.get(name) == got.headers.get(name), name
    assert int(head.headers["content-length"]) == len(got.content)


def test_healthz(idle_client):
    assert_head_like_get(idle_client, "/healthz", 200)


def test_readyz_ready(client):
    assert_head_like_get(client, "/readyz", 200)


def test_readyz_not_ready(idle_client):  # no worker started
    assert_head_like_get(idle_client, "/readyz", 503)


def test_signed_result_link(client):
    body = {"prompt": "a fox", "width": 256, "height": 256, "steps": 1, "output_format": "png"}
    result = poll_result(client, client.post("/v1/flux-dev", json=body).json()["id"])
    url = result["result"]["sample"]
    assert "/files/" in url
    assert "sig=" in url
    assert_head_like_get(client, url, 200)
    head = client.head(url)
    assert head.headers["content-type"] == "image/png"
    assert head.headers["cache-control"].startswith("private, max-age=")


def test_tampered_result_link(client):
    assert_head_like_get(client, "/files/results/x/0.png?exp=99999999999&sig=bad", 403)


def test_other_get_routes_take_no_head(idle_client):
    # A GET may hand something over once there (fal's sync_mode result): a HEAD must not.
    path = "/queue/fal-ai/flux/requests/00000000-0000-0000-0000-000000000000"
    assert idle_client.get(path).status_code == 404
    assert idle_client.head(path).status_code == 405
