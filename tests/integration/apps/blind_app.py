"""An app whose failures carry secrets everywhere the server must not see them (tests/server/test_blindness.py).

Exception text, outbound URLs (webhook paths, `?key=`, `?code=`, `?sig=`), env values, log lines, request ids,
incoming paths and headers: each holds a canary from BLIND_CANARIES (JSON, set by the test). Outbound calls go
to an in-process `httpx.MockTransport`, so nothing leaves the machine, and FluxRun records them like any fetch.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable

import httpx
from fastapi import FastAPI, Request, Response
from starlette.middleware.base import BaseHTTPMiddleware

import fluxrun

fluxrun.init()  # FLUXRUN_DSN, FLUXRUN_CAPTURE_KEY and FLUXRUN_DIR come from the environment

C: dict[str, str] = json.loads(os.environ["BLIND_CANARIES"])
log = logging.getLogger("blind")


def upstream(request: httpx.Request) -> httpx.Response:
    """Google Maps refuses the key (so httpx's error quotes the URL); every other service says ok."""
    return httpx.Response(403 if request.url.host == "maps.googleapis.com" else 200, json={"ok": True})


client = httpx.Client(transport=httpx.MockTransport(upstream))


def call_out() -> None:
    """Everything a failing request did before it failed: env reads, webhooks, a log line."""
    os.environ.get("SHOP_DB_PASSWORD")
    client.post(C["slack_url"], json={"text": "order 7 failed"})
    client.post(C["telegram_url"], json={"chat_id": 42, "text": "order 7 failed"})
    client.post(C["discord_url"], json={"content": "order 7 failed"})
    client.get(C["storage_url"])
    log.warning("charging %s for %s", C["iban_printed"], C["email"])


FAILURES: dict[str, Callable[[], BaseException]] = {
    "password": lambda: RuntimeError(f"login failed for alice: wrong password {C['password']}"),
    "api_key": lambda: PermissionError(f"upstream refused api key {C['api_key']}"),
    "email": lambda: LookupError(f"no account for {C['email']}"),
    "iban": lambda: ValueError(f"transfer to {C['iban_printed']} refused (compact {C['iban']})"),
    "aws": lambda: RuntimeError(f"S3 auth failed for {C['aws_key_id']} {C['aws_secret']}"),
    "slack": lambda: RuntimeError(f"POST {C['slack_url']} answered 404"),
    "telegram": lambda: RuntimeError(f"POST {C['telegram_url']} timed out"),
    "env": lambda: RuntimeError("database unavailable"),
}


class Guard(BaseHTTPMiddleware):
    """Refuses `/guarded/...` before routing, so the failure has no route template, only its raw path."""

    async def dispatch(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path.startswith("/guarded/"):
            raise PermissionError("refused before routing")
        return await call_next(request)


app = FastAPI()
app.add_middleware(Guard)
app.add_middleware(fluxrun.FluxRunMiddleware)


@app.get("/")
def index() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/fail/{case}")
def fail(case: str) -> dict[str, str]:
    call_out()
    if case == "maps":
        client.get(C["maps_url"]).raise_for_status()  # HTTPStatusError quotes the URL with ?key= and ?code=
    raise FAILURES[case]()


@app.get("/hook/{token}")
def telegram_update(token: str) -> dict[str, str]:
    """A bot's webhook endpoint: the bot token is part of the path Telegram calls."""
    call_out()
    raise RuntimeError("update rejected")


@app.get("/fluxrun/stats")
def stats() -> dict[str, int]:
    return fluxrun.stats()
