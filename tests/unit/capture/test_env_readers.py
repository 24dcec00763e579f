"""Env reads are attributed to the code that made them: an installed package's read (httpx reading
SSL_CERT_FILE while it builds its SSL context) is recorded, so replay stays faithful, but marked as the
package's, in the payload and in the summary the dashboard lists; the app's own reads carry no mark."""

from __future__ import annotations

import os

import certifi
import httpx
import pytest

import fluxrun
from fluxrun.replay import run


@fluxrun.capture
def price(sku: str) -> float:
    region = os.environ.get("SHOP_REGION", "eu")
    with httpx.Client(base_url="http://pricing.invalid"):
        pass
    raise LookupError(f"{sku} has no price in {region}")


def env_events(captured, key: str) -> list[dict]:
    return [e for e in captured.events("env") if e["call"] == f"env {key}"]


@pytest.mark.parametrize("cert_file", [None, certifi.where()], ids=["unset", "set"])
def test_httpx_reading_its_ssl_settings_is_the_package_read_not_the_app(captured, monkeypatch, cert_file):
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    if cert_file is None:
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    else:
        monkeypatch.setenv("SSL_CERT_FILE", cert_file)
    with pytest.raises(LookupError):
        price("sku-7")
    (read,) = env_events(captured, "SSL_CERT_FILE")  # still recorded: replay serves it
    assert read["data"]["reader"] in ("package", "library"), read
    assert not read["site"].startswith(__name__), read["site"]
    (own,) = env_events(captured, "SHOP_REGION")
    assert own["site"].startswith(f"{__name__}:price:") and "reader" not in own["data"]

    (bundle,) = captured.bundles()
    index = {e["seq"]: e for e in bundle.sealed.summary["events"]}
    assert index[read["seq"]]["reader"] == read["data"]["reader"]
    assert "reader" not in index[own["seq"]]


def test_reads_made_by_httpx_itself_name_httpx(captured, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)  # so the proxy lookup's walk of the environment skips it
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with pytest.raises(LookupError):
        price("sku-7")
    for key in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        (read,) = env_events(captured, key)
        assert read["site"].startswith("httpx._config:create_ssl_context:"), read
        assert read["data"]["reader"] == "package"


def test_a_bundle_with_package_reads_replays_the_same(captured, monkeypatch, keys):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    with pytest.raises(LookupError):
        price("sku-7")
    (path,) = captured.files()
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())  # the replaying machine's environment differs
    result = run(path, keys.replay_key)
    assert result.outcome == "reproduced", result.summary()
    assert not result.unconsumed, result.summary()
