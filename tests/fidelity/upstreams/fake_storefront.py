"""A storefront's backend services for the aiohttp fan-out scenario, each answering after its own delay.

- `GET /profile/{user}` (20 ms) and `GET /orders/{user}` (60 ms): 200 with JSON.
- `GET /recommendations/{user}` (150 ms, the last to answer, or `?delay=` seconds): 500, the recommender is down.
`GET /_hits` counts the API requests served.
"""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

HITS = {"n": 0}


async def profile(request: Request) -> Response:
    HITS["n"] += 1
    await asyncio.sleep(0.02)
    return JSONResponse({"user": request.path_params["user"], "name": "Ada", "tier": "gold"})


async def orders(request: Request) -> Response:
    HITS["n"] += 1
    await asyncio.sleep(0.06)
    return JSONResponse({"orders": [{"id": "o-1", "total": 4200}, {"id": "o-2", "total": 1250}]})


async def recommendations(request: Request) -> Response:
    HITS["n"] += 1
    await asyncio.sleep(float(request.query_params.get("delay", "0.15")))
    return JSONResponse({"error": "recommender unavailable"}, status_code=500)


async def hits(request: Request) -> Response:
    return JSONResponse({"hits": HITS["n"]})


app = Starlette(
    routes=[
        Route("/profile/{user}", profile),
        Route("/orders/{user}", orders),
        Route("/recommendations/{user}", recommendations),
        Route("/_hits", hits),
    ]
)
