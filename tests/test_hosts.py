"""Trusted hosts: links never follow a Host header the operator did not name."""

from __future__ import annotations

import pytest

from fluxserve.bootstrap import build_services
from fluxserve.cli.main import main
from fluxserve.config import Settings
from fluxserve.errors import ConfigurationError
from tests.helpers import SMALL, idle_app


@pytest.fixture
def guarded(settings):
    named = settings.model_copy(update={"allowed_hosts": ["api.example.com", "*.example.org"]})
    yield from idle_app(named)


def test_another_host_gets_400_and_no_job(guarded):
    response = guarded.post(
        "/v1/flux-dev", json={"prompt": "a fox", **SMALL}, headers={"Host": "evil.example"}
    )
    assert response.status_code == 400
    assert guarded.app.state.services.store.queued_counts() == {}


@pytest.mark.parametrize("host", ["api.example.com", "api.example.com:8443", "eu.example.org"])
def test_a_named_host_is_served_and_its_links_use_it(guarded, host):
    response = guarded.post("/v1/flux-dev", json={"prompt": "a fox", **SMALL},
                            headers={"Host": host})  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json()["polling_url"].startswith(f"http://{host}/v1/get_result?id=")


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_and_metrics_answer_any_host(guarded, path):
    # A load balancer's health check or a Prometheus scrape asks by address.
    assert guarded.get(path, headers={"Host": "10.0.0.7:8000"}).status_code != 400


def test_links_use_public_url_whatever_the_host(settings):
    public = settings.model_copy(update={"public_url": "https://images.example.com"})
    client = next(idle_app(public))
    response = client.post(
        "/v1/flux-dev", json={"prompt": "a fox", **SMALL}, headers={"Host": "evil.example"}
    )
    assert response.json()["polling_url"].startswith("https://images.example.com/v1/")
    client.app.state.services.store.close()


def test_a_public_address_needs_allowed_hosts_or_a_public_url(tmp_path):
    base = {"host": "0.0.0.0", "auth": "off", "model": ["tiny"], "data_dir": tmp_path}
    services = build_services(Settings(**base))
    with pytest.raises(ConfigurationError, match="--allowed-hosts"):
        services.check_hosts()
    services.store.close()
    for extra in ({"allowed_hosts": ["api.example.com"]}, {"public_url": "https://x.example"}):
        services = build_services(Settings(**base, **extra))
        services.check_hosts()
        services.store.close()
    services = build_services(Settings(**{**base, "host": "127.0.0.1"}))
    services.check_hosts()  # loopback: only this machine's clients
    services.store.close()


def test_serve_on_a_public_address_without_hosts_exits_with_the_reason(tmp_path, capsys):
    args = ["serve", "--host", "0.0.0.0", "--auth", "off", "--model", "tiny"]
    assert main([*args, "--data-dir", str(tmp_path)]) == 1
    assert "--allowed-hosts" in capsys.readouterr().err


def test_allowed_hosts_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FLUXSERVE_ALLOWED_HOSTS", "a.example, b.example")
    assert Settings(data_dir=tmp_path).allowed_hosts == ["a.example", "b.example"]
