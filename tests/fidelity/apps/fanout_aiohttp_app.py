"""Scenario aiohttp fan-out: a home page route fetches profile, orders and recommendations at once with aiohttp
and `asyncio.gather`. STOREFRONT_URL is read inside the request.

The recommender answers 500: `raise_for_status` raises ClientResponseError out of `gather`, and `app` answers
500. On `/home` it answers last, after the other two; on `/feed` it answers first (the feed asks it for a quick
answer), while the other two calls are still in flight: leaving `async with ClientSession` closes their
connections (ServerDisconnectedError), aiohttp retries them, and the execution ends with the retries pending.
`fixed_app` gathers with `return_exceptions=True` and renders the page without recommendations.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
from fastapi import FastAPI

import fluxrun

fluxrun.init()  # FLUXRUN_CAPTURE_KEY and FLUXRUN_DIR come from the environment


async def get_json(session: aiohttp.ClientSession, path: str) -> Any:
    async with session.get(path) as response:
        return await response.json()


def build(fixed: bool) -> FastAPI:
    app = FastAPI()
    app.add_middleware(fluxrun.FluxRunMiddleware)

    @app.get("/users/{user}/home")
    async def home(user: str) -> dict[str, Any]:
        return await page(user, f"/recommendations/{user}")

    @app.get("/users/{user}/feed")
    async def feed(user: str) -> dict[str, Any]:
        return await page(user, f"/recommendations/{user}?delay=0.005")

    async def page(user: str, recommendations: str) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(os.environ["STOREFRONT_URL"], raise_for_status=True, timeout=timeout) as s:
            profile, orders, recommended = await asyncio.gather(
                get_json(s, f"/profile/{user}"),
                get_json(s, f"/orders/{user}"),
                get_json(s, recommendations),
                return_exceptions=fixed,
            )
        for answer in (profile, orders):
            if isinstance(answer, BaseException):
                raise answer
        if isinstance(recommended, aiohttp.ClientResponseError):
            recommended = {"items": []}  # the page renders without them
        return {"name": profile["name"], "orders": len(orders["orders"]), "recommended": recommended["items"]}

    return app


app = build(fixed=False)
fixed_app = build(fixed=True)
