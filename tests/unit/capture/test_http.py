"""HTTP fetches through httpx and httpx2, sync and async, streamed and not, and transport errors."""

from __future__ import annotations

import importlib

import pytest

import fluxrun

LIBRARIES = ["httpx", "httpx2"]


def _handler(lib, asynchronous=False):
    def handle(request):
        if request.url.path == "/down":
            raise lib.ConnectError("connection refused", request=request)
        if request.url.path == "/slow":
            raise lib.ReadTimeout("timed out", request=request)
        if request.url.path == "/stream":  # a body that arrives in chunks, unread until the app reads it
            chunks = [b'{"ok": true, ', b'"echo": "', request.content, b'"}']
            if asynchronous:

                async def agen():
                    for chunk in chunks:
                        yield chunk

                return lib.Response(200, content=agen())
            return lib.Response(200, content=iter(chunks))
        return lib.Response(
            201,
            headers={"content-type": "application/json", "set-cookie": "s=1"},
            content=b'{"ok": true, "echo": "' + request.content + b'"}',
        )

    return handle


@pytest.fixture(params=LIBRARIES)
def lib(request):
    return importlib.import_module(request.param)


def test_sync_fetch_records_request_and_response(captured, lib):
    @fluxrun.capture
    def job():
        with lib.Client(transport=lib.MockTransport(_handler(lib))) as client:
            client.post("https://api.example.test/v1/orders?x=1", content=b"hello", headers={"x-trace": "t1"})
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        job()
    (event,) = captured.events("http")
    assert event["call"] == "POST https://api.example.test/v1/orders?x=1"
    request, response = event["data"]["request"], event["data"]["response"]
    assert request["method"] == "POST" and request["body"]["text"] == "hello"
    assert ["x-trace", "t1"] in request["headers"]
    assert response["status"] == 201
    assert response["body"]["text"] == '{"ok": true, "echo": "hello"}'
    assert ["set-cookie", "s=1"] in response["headers"]
    assert event["data"]["client"] == lib.__name__
    assert event["site"].startswith(f"{__name__}:")  # the app's line, not httpx's


@pytest.mark.anyio
async def test_async_fetch_records_request_and_response(captured, lib):
    @fluxrun.capture
    async def job():
        async with lib.AsyncClient(transport=lib.MockTransport(_handler(lib))) as client:
            response = await client.get("https://api.example.test/v1/items")
        raise RuntimeError(response.status_code)

    with pytest.raises(RuntimeError):
        await job()
    (event,) = captured.events("http")
    assert event["data"]["response"]["status"] == 201


def test_streamed_response_is_teed_as_the_app_reads_it(captured, lib):
    @fluxrun.capture
    def job():
        with lib.Client(transport=lib.MockTransport(_handler(lib))) as client:
            with client.stream("POST", "https://api.example.test/stream", content=b"abc") as response:
                body = b"".join(response.iter_bytes())
        raise RuntimeError(body)

    with pytest.raises(RuntimeError):
        job()
    (event,) = captured.events("http")
    assert event["data"]["stream"] is True
    body = event["data"]["response"]["body"]
    assert body["text"] == '{"ok": true, "echo": "abc"}' and body["complete"] is True


@pytest.mark.anyio
async def test_async_streamed_response(captured, lib):
    @fluxrun.capture
    async def job():
        async with lib.AsyncClient(transport=lib.MockTransport(_handler(lib, asynchronous=True))) as client:
            async with client.stream("POST", "https://api.example.test/stream", content=b"xyz") as response:
                await response.aread()
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        await job()
    (event,) = captured.events("http")
    body = event["data"]["response"]["body"]
    assert body["text"] == '{"ok": true, "echo": "xyz"}' and body["encoding"] == "raw" and body["size"] == 27


@pytest.mark.parametrize(("path", "error"), [("/down", "ConnectError"), ("/slow", "ReadTimeout")])
def test_transport_errors_are_recorded(captured, lib, path, error):
    @fluxrun.capture
    def job():
        with lib.Client(transport=lib.MockTransport(_handler(lib))) as client:
            client.get(f"https://api.example.test{path}")

    with pytest.raises(getattr(lib, error)):
        job()
    (event,) = captured.events("http")
    assert event["error"]["type"] == f"{lib.__name__}:{error}"
    assert "response" not in event["data"]


def test_bodies_over_the_limit_are_truncated_and_marked(capture_with, lib):
    captured = capture_with(max_body_size=4)

    @fluxrun.capture
    def job():
        with lib.Client(transport=lib.MockTransport(_handler(lib))) as client:
            client.post("https://api.example.test/big", content=b"0123456789")
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        job()
    (event,) = captured.events("http")
    body = event["data"]["request"]["body"]
    assert body == {"text": "0123", "size": 10, "truncated": True}
    assert event["data"]["response"]["body"]["truncated"] is True


def test_generator_request_bodies_are_not_buffered(captured, lib):
    def chunks():
        yield b"part1"
        yield b"part2"

    @fluxrun.capture
    def job():
        with lib.Client(transport=lib.MockTransport(lambda r: lib.Response(200, content=r.read()))) as client:
            response = client.post("https://api.example.test/upload", content=chunks())
        raise RuntimeError(response.content)

    with pytest.raises(RuntimeError, match="part1part2"):
        job()
    (event,) = captured.events("http")
    assert event["data"]["request"]["body"]["streamed"] is True
