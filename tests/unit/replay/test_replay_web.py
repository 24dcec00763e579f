"""Replay of ASGI and WSGI apps in-process: the recorded request goes in, the recorded IO is served."""

from __future__ import annotations

import os

import httpx
import pytest
from fastapi import FastAPI
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
