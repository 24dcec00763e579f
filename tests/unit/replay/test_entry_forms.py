"""Every way an app is wrapped records an entry point replay can call without `app=` (issue 14, item 4):
the middleware bound to a module attribute (raw ASGI, Litestar, a plain WSGI app), Starlette's
`add_middleware`, Flask's `wsgi_app`; and a framework that answers 500 itself (Flask, Litestar) still
reproduces the same exception type."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import httpx
import pytest
from fastapi import FastAPI
from flask import Flask
from litestar import Litestar, get
from litestar.params import PathParameter
from starlette.applications import Starlette
from starlette.routing import Route

import fluxrun


@pytest.fixture(autouse=True)
def in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUXRUN_REPLAY_ISOLATE", "0")
    monkeypatch.delenv("FLUXRUN_REPLAY_APP", raising=False)


@fluxrun.boundary("forms.load")
def load(item: int) -> dict[str, int]:
    return {"id": item}


def fail(item: int) -> None:
    found = load(item)
    raise KeyError(f"no price for {found['id']}")


async def starlette_view(request: Any) -> Any:
    fail(int(request.path_params["item"]))


starlette_raw = fluxrun.FluxRunMiddleware(Starlette(routes=[Route("/items/{item}", starlette_view)]))

fastapi_app = FastAPI()
fastapi_app.add_middleware(fluxrun.FluxRunMiddleware)


@fastapi_app.get("/items/{item}")
async def fastapi_view(item: int) -> None:
    fail(item)


@get("/items/{item:int}")
async def litestar_view(item: Annotated[int, PathParameter()]) -> None:
    fail(item)


litestar_raw = fluxrun.FluxRunMiddleware(Litestar([litestar_view]))

flask_app = Flask("forms")


@flask_app.get("/items/<int:item>")
def flask_view(item: int) -> str:
    fail(item)
    return ""


flask_app.wsgi_app = fluxrun.FluxRunWSGIMiddleware(flask_app.wsgi_app)  # type: ignore[method-assign]


def plain_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    fail(int(environ["PATH_INFO"].rsplit("/", 1)[1]))
    return []


wsgi_raw = fluxrun.FluxRunWSGIMiddleware(plain_wsgi)


def call_asgi(app: Any) -> None:
    async def go() -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/items/4")).status_code == 500

    asyncio.run(go())


def call_flask(app: Any) -> None:
    with app.test_client().get("/items/4") as response:  # the execution ends when the server closes the body
        assert response.status_code == 500


def call_wsgi(app: Any) -> None:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/items/4", "SERVER_NAME": "t", "SERVER_PORT": "80",
               "wsgi.url_scheme": "http"}  # fmt: skip
    with pytest.raises(KeyError):
        app(environ, lambda *a: None)


FORMS = {
    "starlette raw": (starlette_raw, call_asgi, "starlette_raw", "/items/{item}"),
    "fastapi add_middleware": (fastapi_app, call_asgi, "fastapi_app", "/items/{item}"),
    "litestar raw": (litestar_raw, call_asgi, "litestar_raw", "/items/{item}"),
    "flask wsgi_app": (flask_app, call_flask, "flask_app", "/items/<int:item>"),
    "wsgi raw": (wsgi_raw, call_wsgi, "wsgi_raw", "/items/4"),
}


@pytest.mark.parametrize("form", list(FORMS))
def test_the_entry_point_is_recorded_and_replay_calls_it(captured, keys, form):
    app, call, attr, route = FORMS[form]
    call(app)
    [path] = captured.files()
    payload = captured.one()
    assert payload["entry"] == f"{__name__}:{attr}"
    assert payload["request"]["route"] == route
    assert payload["outcome"]["error"]["type"] == "builtins:KeyError"  # raised, or handled by the framework
    result = fluxrun.replay.run(path, keys.replay)
    assert result.entry == f"{__name__}:{attr}"
    assert result.outcome == "reproduced", result.summary()
    assert result.new.error_type == "builtins:KeyError"


def test_entry_rules_match_method_route_path_or_recorded_entry_first_rule_wins():
    from pytest_fluxrun._entries import entry_for, rules

    chosen = rules(["GET /orders/* = shop:app  # reads", "/orders/* = shop:writes", "jobs:* = jobs:run", "main:app"])
    bundle = {"entry": "jobs:nightly", "request": {"method": "POST", "route": "/orders/{id}", "path": "/orders/3"}}
    assert entry_for(chosen, bundle) == "shop:writes"
    assert entry_for(chosen, {**bundle, "request": {"method": "GET", "route": "/orders/{id}"}}) == "shop:app"
    assert entry_for(chosen, {"entry": "jobs:nightly", "request": {}}) == "jobs:run"
    assert entry_for(chosen, {"entry": "other:x", "request": {}}) == "main:app"
    assert entry_for(rules("a:b"), {}) == "a:b" and entry_for(rules("/x/* = a:b; c:d"), {}) == "c:d"
    assert entry_for(rules(""), bundle) is None
