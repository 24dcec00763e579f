"""Replay of ASGI and WSGI apps in-process: the recorded request goes in, the recorded IO is served."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from flask import Flask, jsonify, request

import fluxrun

STATE = {"fixed": False}


def pricing(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"amount": 5})


api = FastAPI()
api.add_middleware(fluxrun.FluxRunMiddleware)


@api.post("/quote/{sku}")
async def quote(sku: str, body: dict) -> dict:
    async with httpx.AsyncClient(transport=httpx.MockTransport(pricing)) as client:
        answer = (await client.post("https://pricing.test/quote", json={"sku": sku, "qty": body["qty"]})).json()
    if STATE["fixed"]:
        return {"total": answer.get("price", answer.get("amount")) * body["qty"]}
    return {"total": answer["price"] * body["qty"]}


web = Flask("replay_wsgi")


@web.post("/signup")
def signup():
    plan = os.environ.get("SIGNUP_PLAN")
    if plan is None and not STATE["fixed"]:
        return jsonify(error="no plan configured"), 503
    return jsonify(plan=plan or "free", email=request.get_json()["email"])


web.wsgi_app = fluxrun.FluxRunWSGIMiddleware(web.wsgi_app)  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def unfixed():
    STATE["fixed"] = False


def test_an_asgi_request_replays_with_its_body_and_fetch(captured, keys):
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            return await client.post("/quote/sku-9", json={"qty": 3})

    import asyncio

    assert asyncio.run(call()).status_code == 500
    (path,) = captured.files()
    fluxrun.shutdown()
    result = fluxrun.replay.run(path, keys.replay)
    assert result.outcome == "reproduced" and result.new.error_type == "builtins:KeyError"
    assert result.served["http"] == 1
    assert result.entry.endswith(":api")
    STATE["fixed"] = True
    fixed = fluxrun.replay.run(path, keys.replay, expect="fixed")
    assert fixed.response["status"] == 200 and fixed.response["body"] == b'{"total":15}'


def test_a_wsgi_5xx_answer_replays(captured, keys, monkeypatch):
    monkeypatch.delenv("SIGNUP_PLAN", raising=False)
    with web.test_client() as client, client.post("/signup", json={"email": "a@example.test"}) as response:
        assert response.status_code == 503
    (path,) = captured.files()
    fluxrun.shutdown()
    monkeypatch.setenv("SIGNUP_PLAN", "pro")  # replay still sees the recorded absence
    result = fluxrun.replay.run(path, keys.replay)  # the entry point is the Flask app at its module attribute
    assert result.outcome == "reproduced" and result.new.status == 503
    assert result.entry.endswith(":web")
    STATE["fixed"] = True
    fixed = fluxrun.replay.run(path, keys.replay, expect="fixed")
    assert b'"plan":"free"' in fixed.response["body"]


@api.post("/early")
async def early() -> dict:
    raise RuntimeError("failed before reading the body")


def test_a_body_the_app_never_read_is_still_recorded_for_replay(captured):
    import asyncio

    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            return await client.post("/early", json={"order": 12})

    assert asyncio.run(call()).status_code == 500
    assert captured.one()["request"]["body"]["text"] == '{"order":12}'


# -- the app's lifespan: clients made at startup (FastAPI's documented set-up) -----------------------------------
@contextlib.asynccontextmanager
async def pricing_client(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(pricing), base_url="https://pricing.test") as client:
        app.state.pricing = client  # on the app's state, or yielded: the request's state
        yield {"pricing": client}
    LIFESPAN["shut down"] = True


LIFESPAN: dict[str, Any] = {}
lifespan_api = FastAPI(lifespan=pricing_client)
lifespan_api.add_middleware(fluxrun.FluxRunMiddleware)


@lifespan_api.get("/quote/{sku}")
async def lifespan_quote(sku: str, request: Request) -> dict:
    on_app = (await request.app.state.pricing.post("/quote", json={"sku": sku})).json()
    on_request = (await request.state.pricing.post("/quote", json={"sku": sku})).json()
    return {"total": on_app["price"] + on_request["amount"]}  # KeyError: the upstream answers "amount"


def serve_once(app: FastAPI, path: str) -> int:
    """One request the way a server sends it: inside the app's lifespan, with its state in the request's."""

    async def call() -> int:
        async with app.router.lifespan_context(app) as state:

            async def with_state(scope: Any, receive: Any, send: Any) -> None:
                await app({**scope, "state": dict(state or {})}, receive, send)

            transport = httpx.ASGITransport(app=with_state, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
                return (await client.get(path)).status_code

    return asyncio.run(call())


def test_an_app_whose_clients_are_made_in_its_lifespan_replays(captured, keys):
    assert serve_once(lifespan_api, "/quote/sku-9") == 500
    (path,) = captured.files()
    fluxrun.shutdown()
    LIFESPAN.clear()
    result = fluxrun.replay.run(path, keys.replay, app=lifespan_api, isolate=False)
    assert result.outcome == "reproduced", result.summary()
    assert result.new.error_type == "builtins:KeyError" and result.served["http"] == 2
    assert result.warnings == []
    assert LIFESPAN == {"shut down": True}  # and it shut down after the request


@contextlib.asynccontextmanager
async def reaches_out(app: FastAPI) -> AsyncIterator[None]:
    async with httpx.AsyncClient() as client:
        await client.get("http://config.internal/flags")  # startup IO: not part of any recorded request
    yield


startup_io_api = FastAPI(lifespan=reaches_out)
startup_io_api.add_middleware(fluxrun.FluxRunMiddleware)


@startup_io_api.get("/boom")
async def boom() -> dict:
    raise LookupError("no such flag")


@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "in-process"])
def test_a_lifespan_startup_that_needs_the_network_is_left_out_with_a_warning(captured, keys, isolate):
    transport = httpx.ASGITransport(app=startup_io_api, raise_app_exceptions=False)  # no lifespan at capture

    async def call() -> int:
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            return (await client.get("/boom")).status_code

    assert asyncio.run(call()) == 500
    (path,) = captured.files()
    fluxrun.shutdown()
    result = fluxrun.replay.run(path, keys.replay, app=startup_io_api, isolate=isolate)
    assert result.outcome == "reproduced", result.summary()  # its blocked startup IO does not fail the replay
    (warning,) = result.warnings
    assert warning.startswith("the app's lifespan startup failed at replay: fluxrun.errors.LiveIOBlocked")
    assert "config.internal" in warning and "so the request ran without it" in warning
