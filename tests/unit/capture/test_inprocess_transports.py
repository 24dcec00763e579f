"""A client whose transport runs the app in this process (httpx/httpx2 ASGITransport and WSGITransport,
Starlette's TestClient) is not an outside call: it is neither recorded nor served, and the IO the app makes
inside is recorded and served as the app's own. So a failure inside the app reproduces at its own line, and
a fix inside the app runs at replay."""

from __future__ import annotations

import asyncio
import importlib
import json
import subprocess
import sys

import pytest

import fluxrun

LIBRARIES = ["httpx", "httpx2"]
MODE = {"fixed": False, "upstream_calls": 0}


@pytest.fixture(autouse=True)
def reset():
    MODE.update(fixed=False, upstream_calls=0)


def _upstream(lib):
    """The outside service the in-process app fetches from (a mock transport: an outside call)."""

    def handle(request):
        MODE["upstream_calls"] += 1
        return lib.Response(200, json={"regions": [{"name": "north", "sum": 3}, {"name": "south"}]})

    return handle


def _total(totals: dict) -> int:
    return sum(r.get("sum", 0) if MODE["fixed"] else r["sum"] for r in totals["regions"])


def asgi_app(lib):
    async def app(scope, receive, send):
        if scope["type"] == "lifespan":  # TestClient's `with` runs the app's startup and shutdown
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        async with lib.AsyncClient(transport=lib.MockTransport(_upstream(lib))) as client:
            totals = (await client.get("https://totals.test/day")).json()
        body = json.dumps({"total": _total(totals)}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    return app


def wsgi_app(lib):
    def app(environ, start_response):
        with lib.Client(transport=lib.MockTransport(_upstream(lib))) as client:
            totals = client.get("https://totals.test/day").json()
        start_response("200 OK", [("content-type", "application/json")])
        return [json.dumps({"total": _total(totals)}).encode()]

    return app


def _asgi_report(name: str):
    lib = importlib.import_module(name)

    @fluxrun.capture
    async def report() -> dict:
        transport = lib.ASGITransport(app=asgi_app(lib))
        async with lib.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return (await client.get("/reports/day")).json()

    return report


def _wsgi_report(name: str):
    lib = importlib.import_module(name)

    @fluxrun.capture
    def report() -> dict:
        with lib.Client(transport=lib.WSGITransport(app=wsgi_app(lib)), base_url="http://testserver") as client:
            return client.get("/reports/day").json()

    return report


asgi_report_httpx = _asgi_report("httpx")
asgi_report_httpx2 = _asgi_report("httpx2")
wsgi_report_httpx = _wsgi_report("httpx")
wsgi_report_httpx2 = _wsgi_report("httpx2")


@fluxrun.capture
def report_through_testclient() -> dict:
    import httpx
    from starlette.testclient import TestClient

    with TestClient(asgi_app(httpx)) as client:  # the app runs on an anyio portal in a thread of its own
        return client.get("/reports/day").json()


def _run(report):
    result = report()
    return asyncio.run(result) if asyncio.iscoroutine(result) else result


REPORTS = {
    "asgi-httpx": asgi_report_httpx,
    "asgi-httpx2": asgi_report_httpx2,
    "wsgi-httpx": wsgi_report_httpx,
    "wsgi-httpx2": wsgi_report_httpx2,
    "testclient": report_through_testclient,
}


@pytest.fixture(params=sorted(REPORTS))
def report(request):
    return REPORTS[request.param]


def test_the_in_process_request_is_not_recorded_and_the_apps_own_fetch_is(captured, report):
    with pytest.raises(KeyError, match="sum"):
        _run(report)
    (event,) = captured.events("http")  # the app's fetch only; nothing for http://testserver
    assert event["call"] == "GET https://totals.test/day"
    assert event["data"]["response"]["status"] == 200
    error = captured.one()["outcome"]["error"]
    assert error["type"] == "builtins:KeyError"  # raised inside the app, through the in-process transport


def test_replay_runs_the_app_and_serves_its_fetch_from_the_recording(captured, keys, report):
    with pytest.raises(KeyError):
        _run(report)
    (path,) = captured.files()
    fluxrun.shutdown()
    MODE["upstream_calls"] = 0
    result = fluxrun.replay.run(path, keys.replay, app=report, expect="reproduce")
    assert result.outcome == "reproduced"
    assert result.served["http"] == 1 and result.unconsumed == []
    assert [call for kind, call, _, _ in result.events if kind == "http"] == ["GET https://totals.test/day"]
    assert MODE["upstream_calls"] == 0  # the app's fetch was served, not made


def test_the_fixed_app_runs_at_replay_and_passes(captured, keys, report):
    with pytest.raises(KeyError):
        _run(report)
    (path,) = captured.files()
    fluxrun.shutdown()
    MODE["fixed"] = True
    result = fluxrun.replay.run(path, keys.replay, app=report, expect="fixed")
    assert result.outcome == "fixed"
    assert result.served["http"] == 1
    assert MODE["upstream_calls"] == 1  # only the capture reached the upstream


def test_an_outside_call_through_a_mounted_in_process_transport_passes_through(captured):
    import httpx

    @fluxrun.capture
    def job() -> None:
        mounts = {"http://testserver": httpx.WSGITransport(app=wsgi_app(httpx))}
        with httpx.Client(transport=httpx.MockTransport(_upstream(httpx)), mounts=mounts) as client:
            client.get("https://totals.test/outside")  # the default transport: an outside call, recorded
            client.get("http://testserver/reports/day")  # the mounted in-process app: passes through

    with pytest.raises(KeyError):
        job()
    calls = [e["call"] for e in captured.events("http")]
    assert calls == ["GET https://totals.test/outside", "GET https://totals.test/day"]


def test_detecting_test_clients_does_not_import_starlette(tmp_path, keys):
    code = f"""
import sys, httpx, fluxrun
fluxrun.init(directory={str(tmp_path)!r}, capture_key={str(keys.capture)!r})

@fluxrun.capture
def job():
    with httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200))) as client:
        client.get("https://example.test/")

job()
fluxrun.shutdown()
print(sorted(m for m in sys.modules if m.startswith("starlette")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
