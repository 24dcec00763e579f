"""Failures through requests, urllib3 (boto3 on moto's S3) and aiohttp, replayed with the upstream stopped.

Each test captures a failing function against a real loopback upstream, stops the upstream, and replays
(in the isolated child, no network): the failure reproduces, a different request is a divergence that shows
both, a recorded refused connection comes back as the client's own exception, and an abandoned stream is
served exactly as far as the app read it.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
import requests
import urllib3
from http_upstream import http_upstream, refused_url

import fluxrun

MODE = {"amount": 2000, "fixed": False}


@pytest.fixture(autouse=True)
def reset():
    MODE.update(amount=2000, fixed=False)


@fluxrun.capture
def pay_with_requests(base: str) -> dict:
    session = requests.Session()
    price = session.get(f"{base}/hop", timeout=5).json()["price"]  # a redirect: two hops, cookies kept
    response = session.post(f"{base}/charge", json={"amount": MODE["amount"], "price": price}, timeout=5)
    if MODE["fixed"] and response.status_code == 402:
        return {"declined": True}
    response.raise_for_status()
    return response.json()


@fluxrun.capture
def read_stream_with_requests(base: str) -> None:
    seen = []
    with requests.get(f"{base}/stream", stream=True, timeout=5) as response:
        for chunk in response.iter_content(chunk_size=None):
            if b"{}" in chunk:
                raise ValueError(f"empty event after {seen} cookies={sorted(response.cookies.keys())}")
            seen.append(chunk)


@fluxrun.capture
def read_stream_with_aiohttp(base: str) -> None:
    async def main() -> None:
        seen = []
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/stream") as response:
                async for chunk in response.content.iter_any():
                    if b"{}" in chunk:
                        raise ValueError(f"empty event after {seen}")
                    seen.append(chunk)

    asyncio.run(main())


@fluxrun.capture
def fan_out_with_aiohttp(base: str) -> None:
    async def fetch(session: aiohttp.ClientSession, name: str) -> str:
        async with session.get(f"{base}/price?item={name}") as response:
            return f"{name}={(await response.json())['path']}"

    async def charge(session: aiohttp.ClientSession) -> None:
        async with session.post(f"{base}/charge", json={"amount": MODE["amount"]}) as response:
            response.raise_for_status()

    async def main() -> list:
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(fetch(session, "a"), fetch(session, "b"), charge(session))

    asyncio.run(main())


@fluxrun.capture
def fan_out_with_a_slow_body(base: str) -> None:
    async def fetch(session: aiohttp.ClientSession) -> dict:
        async with session.get(f"{base}/slow-price") as response:
            return await response.json()  # the headers came; the body is still on its way when charge fails

    async def charge(session: aiohttp.ClientSession) -> None:
        await asyncio.sleep(0.1)
        async with session.post(f"{base}/charge", json={"amount": MODE["amount"]}) as response:
            response.raise_for_status()

    async def main() -> list:
        async with aiohttp.ClientSession() as session:
            return await asyncio.gather(fetch(session), charge(session))

    asyncio.run(main())


@fluxrun.capture
def fetch_refused_with_requests(base: str) -> None:
    requests.get(f"{base}/price", timeout=5)


@fluxrun.capture
def fetch_refused_with_aiohttp(base: str) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            await session.get(f"{base}/price")

    asyncio.run(main())


@fluxrun.capture
def fetch_with_urllib3(base: str) -> None:
    response = urllib3.PoolManager().request("GET", f"{base}/price?via=urllib3")
    raise RuntimeError(f"{response.status} {response.json()}")


def capture_failure(captured, function, *args):
    with pytest.raises(Exception) as raised:
        function(*args)
    (path,) = captured.files()
    fluxrun.shutdown()
    return path, raised.value


def test_requests_failure_reproduces_with_the_upstream_stopped(captured, keys):
    with http_upstream() as upstream:
        path, error = capture_failure(captured, pay_with_requests, upstream.url)
        hits = upstream.hits
        upstream.stop()
    assert isinstance(error, requests.HTTPError) and "402" in str(error)
    assert hits == 3  # /hop, /price, /charge
    result = fluxrun.replay.run(path, keys.replay)
    assert result.outcome == "reproduced"
    assert result.new.message == result.original.message
    assert result.served["http"] == 3 and result.unconsumed == []


def test_requests_fix_confirmed_offline(captured, keys):
    with http_upstream() as upstream:
        path, _ = capture_failure(captured, pay_with_requests, upstream.url)
    MODE["fixed"] = True
    assert fluxrun.replay.run(path, keys.replay, expect="fixed").outcome == "fixed"


def test_a_different_request_body_is_a_divergence_that_shows_both(captured, keys):
    with http_upstream() as upstream:
        path, _ = capture_failure(captured, pay_with_requests, upstream.url)
    MODE["amount"] = 999
    with pytest.raises(fluxrun.ReplayDivergence) as raised:
        fluxrun.replay.run(path, keys.replay)
    message = str(raised.value)
    assert "/charge has no recorded answer" in message
    assert "in pay_with_requests" in message  # the app's line, not requests'
    assert "body differs" in message and "2000" in message and "999" in message


def test_a_recorded_refused_connection_is_raised_again_as_requests_connection_error(captured, keys):
    path, error = capture_failure(captured, fetch_refused_with_requests, refused_url())
    assert isinstance(error, requests.ConnectionError)
    result = fluxrun.replay.run(path, keys.replay)
    assert result.outcome == "reproduced"
    assert result.new.error_type == result.original.error_type == "requests.exceptions:ConnectionError"


def test_a_recorded_refused_connection_is_raised_again_as_aiohttp_client_connector_error(captured, keys):
    path, error = capture_failure(captured, fetch_refused_with_aiohttp, refused_url())
    assert isinstance(error, aiohttp.ClientConnectorError)
    result = fluxrun.replay.run(path, keys.replay)
    assert result.outcome == "reproduced"
    assert result.new.error_type == result.original.error_type == "aiohttp.client_exceptions:ClientConnectorError"
    assert result.new.message == result.original.message


def test_urllib3_answers_from_the_tape_before_it_connects(captured, keys):
    with http_upstream() as upstream:
        path, error = capture_failure(captured, fetch_with_urllib3, upstream.url)
    assert "1200" in str(error)
    result = fluxrun.replay.run(path, keys.replay)
    assert result.outcome == "reproduced" and result.new.message == result.original.message


@pytest.mark.parametrize("function", [read_stream_with_requests, read_stream_with_aiohttp])
def test_an_abandoned_stream_replays_exactly_the_pieces_the_app_read(captured, keys, function):
    with http_upstream() as upstream:
        path, error = capture_failure(captured, function, upstream.url)
    assert "empty event after [b'data" in str(error)
    result = fluxrun.replay.run(path, keys.replay)
    assert result.outcome == "reproduced"
    assert result.new.message == result.original.message  # the same pieces, at the same boundaries


def test_reading_past_where_the_app_stopped_names_the_real_cause(captured, keys):
    with http_upstream() as upstream:
        path, _ = capture_failure(captured, read_stream_with_aiohttp, upstream.url)

    # the fix: skip empty events and read on; the recording ends where the app stopped at capture
    fixed = """
async def main():
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/stream") as response:
            async for chunk in response.content.iter_any():
                pass
asyncio.run(main())
"""
    original = read_stream_with_aiohttp.__wrapped__.__code__
    try:
        read_stream_with_aiohttp.__wrapped__.__code__ = _compiled(fixed)
        with pytest.raises(fluxrun.ReplayDivergence) as raised:
            fluxrun.replay.run(path, keys.replay)
    finally:
        read_stream_with_aiohttp.__wrapped__.__code__ = original
    message = str(raised.value)
    assert "the app stopped reading this streamed response after" in message
    assert "max_body_size" not in message


def _compiled(body: str):
    namespace: dict = {}
    source = "def read_stream_with_aiohttp(base):\n" + "".join(f"    {line}\n" for line in body.strip().splitlines())
    exec(compile(source, __file__, "exec"), {"aiohttp": aiohttp, "asyncio": asyncio}, namespace)
    return namespace["read_stream_with_aiohttp"].__code__


def test_aiohttp_fan_out_with_gather_reproduces(captured, keys):
    with http_upstream() as upstream:
        path, error = capture_failure(captured, fan_out_with_aiohttp, upstream.url)
        upstream.stop()
    assert isinstance(error, aiohttp.ClientResponseError) and error.status == 402
    for _ in range(3):
        result = fluxrun.replay.run(path, keys.replay)
        assert result.outcome == "reproduced"
        assert result.new.message == result.original.message
        assert result.served["http"] == 3


def test_a_body_read_in_flight_when_the_task_was_cancelled_stays_pending_at_replay(captured, keys):
    with http_upstream() as upstream:
        path, error = capture_failure(captured, fan_out_with_a_slow_body, upstream.url)
        upstream.stop()
    assert isinstance(error, aiohttp.ClientResponseError) and error.status == 402
    for _ in range(3):
        result = fluxrun.replay.run(path, keys.replay)
        assert result.outcome == "reproduced"
        assert result.new.message == result.original.message


@fluxrun.capture
def archive_receipt(endpoint: str, order: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.put_object(Bucket="receipts", Key=f"{order}.json", Body=b'{"order": "%s", "total": 12}' % order.encode())
    stored = s3.get_object(Bucket="receipts", Key=f"{order}.json")["Body"].read()
    raise RuntimeError(f"receipt {stored!r} has no currency")


def test_boto3_s3_put_and_get_replay_with_moto_stopped(captured, keys, monkeypatch):
    import boto3  # both in the test extra: a missing one is an install error, not a skip
    import moto.server as moto_server

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="receipts")
        path, error = capture_failure(captured, archive_receipt, endpoint, "o-42")
    finally:
        server.stop()
    assert "has no currency" in str(error)
    result = fluxrun.replay.run(path, keys.replay)
    assert result.outcome == "reproduced"
    assert result.new.message == result.original.message
    assert result.served["http"] == 2
    put, get = captured.events("http")
    assert put["call"] == f"PUT {endpoint}/receipts/o-42.json" and put["data"]["client"] == "urllib3"
    assert put["data"]["request"]["body"]["text"] == '{"order": "o-42", "total": 12}'
    assert get["call"] == f"GET {endpoint}/receipts/o-42.json"
