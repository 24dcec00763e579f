"""HTTP fetches through requests, urllib3 and aiohttp against a real upstream on loopback.

One fetch is one event even when requests sits on urllib3; bodies are recorded as the app consumed them,
piece by piece with their boundaries, up to where it stopped; transport errors keep the client's own type.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import types

import aiohttp
import pytest
import requests
import urllib3
from http_upstream import STREAM_LINES, http_upstream, refused_url

import fluxrun


@pytest.fixture
def upstream():
    with http_upstream() as server:
        yield server


def test_requests_records_one_event_not_two_and_the_apps_line(captured, upstream):
    @fluxrun.capture
    def job(base):
        response = requests.post(f"{base}/charge", json={"amount": 2000, "currency": "EUR"}, timeout=5)
        raise RuntimeError(response.json()["error"])

    with pytest.raises(RuntimeError, match="card_declined"):
        job(upstream.url)
    (event,) = captured.events("http")  # requests over urllib3: the pool under requests records nothing more
    assert event["call"] == f"POST {upstream.url}/charge"
    assert event["data"]["client"] == "requests"
    request, response = event["data"]["request"], event["data"]["response"]
    assert request["body"]["text"] == '{"amount": 2000, "currency": "EUR"}'
    assert response["status"] == 402 and response["reason"] == "Payment Required"
    assert '"card_declined"' in response["body"]["text"] and response["body"]["complete"] is True
    assert ["content-type", "application/json"] in response["headers"]
    assert event["site"].startswith(f"{__name__}:") and "job" in event["site"]  # the app's line, not requests'


def test_requests_redirects_are_one_event_per_hop(captured, upstream):
    @fluxrun.capture
    def job(base):
        response = requests.get(f"{base}/hop", timeout=5)
        raise RuntimeError(response.url)

    with pytest.raises(RuntimeError):
        job(upstream.url)
    calls = [e["call"] for e in captured.events("http")]
    assert calls == [f"GET {upstream.url}/hop", f"GET {upstream.url}/price?from=hop"]


def test_urllib3_pool_manager_is_recorded(captured, upstream):
    @fluxrun.capture
    def job(base):
        response = urllib3.PoolManager().request("GET", f"{base}/price?x=1")
        raise RuntimeError(response.json()["price"])

    with pytest.raises(RuntimeError, match="1200"):
        job(upstream.url)
    (event,) = captured.events("http")
    assert event["call"] == f"GET {upstream.url}/price?x=1" and event["data"]["client"] == "urllib3"
    assert event["data"]["response"]["body"]["text"] == '{"price": 1200, "path": "/price?x=1"}'


def test_a_body_urllib3_preloaded_past_the_size_limit_keeps_its_first_bytes_and_its_size(capture_with, upstream):
    captured = capture_with(max_body_size=10)

    @fluxrun.capture
    def job(base):
        response = urllib3.PoolManager().request("GET", f"{base}/price?x=1")  # preload_content=True
        raise RuntimeError(response.json()["price"])

    with pytest.raises(RuntimeError, match="1200"):
        job(upstream.url)
    (event,) = captured.events("http")
    whole = '{"price": 1200, "path": "/price?x=1"}'
    assert event["data"]["response"]["body"] == {
        "text": whole[:10],
        "size": len(whole),
        "truncated": True,
        "encoding": "decoded",
        "complete": True,
    }


@pytest.mark.parametrize("client", ["requests", "urllib3"])
def test_header_lines_are_recorded_in_order_with_repeated_names(captured, upstream, client):
    sent = {"X-Trace": "t-1", "X-Tenant": "acme"}

    @fluxrun.capture
    def job(base):
        if client == "requests":
            requests.get(f"{base}/cookies", headers=sent, timeout=5)
        else:
            urllib3.PoolManager().request("GET", f"{base}/cookies", headers=urllib3.HTTPHeaderDict(sent))
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        job(upstream.url)
    (event,) = captured.events("http")
    request, response = event["data"]["request"], event["data"]["response"]
    assert [list(pair) for pair in request["headers"] if pair[0] in sent] == [list(p) for p in sent.items()]
    cookies = [value for name, value in response["headers"] if name.lower() == "set-cookie"]
    assert cookies == ["a=1; Path=/", "b=2; Path=/"]


def test_a_refused_connection_is_recorded_with_the_clients_type(captured):
    url = refused_url()

    @fluxrun.capture
    def job(base):
        requests.get(f"{base}/price", timeout=5)

    with pytest.raises(requests.ConnectionError):
        job(url)
    (event,) = captured.events("http")
    assert event["error"]["type"] == "requests.exceptions:ConnectionError"
    assert "response" not in event["data"]


def test_an_abandoned_requests_stream_records_the_pieces_it_read(captured, upstream):
    seen = []

    @fluxrun.capture
    def job(base):
        with requests.get(f"{base}/stream", stream=True, timeout=5) as response:
            for line in response.iter_lines():
                if line == b"data: {}":
                    raise ValueError(f"empty chunk after {seen}")
                seen.append(line)

    with pytest.raises(ValueError, match="empty chunk"):
        job(upstream.url)
    (event,) = captured.events("http")
    body = event["data"]["response"]["body"]
    assert body["complete"] is False and body["chunks"] == [len(line) for line in STREAM_LINES[:3]]
    assert body["text"] == b"".join(STREAM_LINES[:3]).decode()  # what the app consumed, not 0 bytes


def test_a_streamed_body_past_the_size_limit_keeps_its_first_bytes_and_every_pieces_size(capture_with, upstream):
    captured = capture_with(max_body_size=20)

    @fluxrun.capture
    def job(base):
        with requests.get(f"{base}/stream", stream=True, timeout=5) as response:
            lines = list(response.iter_lines())
        raise ValueError(f"{len(lines)} lines")

    with pytest.raises(ValueError, match="5 lines"):
        job(upstream.url)
    (event,) = captured.events("http")
    body = event["data"]["response"]["body"]
    whole = b"".join(STREAM_LINES)
    assert body["text"] == whole[:20].decode() and body["truncated"] is True and body["complete"] is True
    assert body["size"] == len(whole) and body["chunks"] == [len(line) for line in STREAM_LINES]


def test_aiohttp_plain_and_abandoned_streams(captured, upstream):
    @fluxrun.capture
    async def job(base):
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/price") as response:
                price = (await response.json())["price"]
            async with session.get(f"{base}/stream") as response:
                async for line in response.content:
                    if line == b"data: {}\n":
                        raise ValueError(f"empty chunk at price {price}")

    with pytest.raises(ValueError, match="empty chunk at price 1200"):
        asyncio.run(job(upstream.url))
    plain, stream = captured.events("http")
    assert plain["data"]["client"] == "aiohttp" and plain["data"]["response"]["body"]["complete"] is True
    assert plain["data"]["response"]["body"]["text"] == '{"price": 1200, "path": "/price"}'
    body = stream["data"]["response"]["body"]
    assert body["chunks"] == [len(line) for line in STREAM_LINES[:3]] and body["complete"] is False


def test_aiohttp_refused_connection_keeps_its_type(captured):
    url = refused_url()

    @fluxrun.capture
    async def job(base):
        async with aiohttp.ClientSession() as session:
            await session.get(f"{base}/price")

    with pytest.raises(aiohttp.ClientConnectorError):
        asyncio.run(job(url))
    (event,) = captured.events("http")
    assert event["error"]["type"] == "aiohttp.client_exceptions:ClientConnectorError"


def test_the_coverage_report_names_only_clients_that_are_imported_and_not_intercepted(
    keys, tmp_path, monkeypatch, caplog
):
    monkeypatch.setitem(sys.modules, "httplib2", types.ModuleType("httplib2"))
    with caplog.at_level(logging.WARNING, logger="fluxrun"):
        fluxrun.init(directory=tmp_path, capture_key=keys.capture)
        fluxrun.shutdown()
    (message,) = [r.getMessage() for r in caplog.records if "does not intercept" in r.getMessage()]
    gaps = message.split(": ", 1)[1].split(". ", 1)[0].split(", ")
    assert "httplib2" in gaps
    assert not {"requests", "urllib3", "aiohttp"} & set(gaps)  # imported here, and intercepted
    assert "pycurl" not in gaps  # never imported
