"""Plain JSON services for the corpus, each answering as a real one does when things go wrong.

- `GET /inventory/{sku}`: 503 with a Retry-After, always (the stock service is down).
- `GET /rates/{currency}`: 503, always (tenacity retries it).
- `GET /v1/prices/{sku}`: 200, but the schema moved on (`amount_cents`, no `price`).
- `GET /v2/prices/{sku}`: the new price API (only a fix calls it).
- `GET /totals/{day}`: 200 with the day's totals, one region missing its `sum`.
`GET /_hits` counts the API requests served.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

HITS = {"n": 0}


def counted(handler):
    async def endpoint(request: Request) -> Response:
        HITS["n"] += 1
        return await handler(request)

    return endpoint


async def inventory(request: Request) -> Response:
    return JSONResponse({"error": "stock service unavailable"}, status_code=503, headers={"retry-after": "30"})


async def rates(request: Request) -> Response:
    return JSONResponse({"error": "rates feed unavailable"}, status_code=503)


async def prices_v1(request: Request) -> Response:
    return JSONResponse({"sku": request.path_params["sku"], "amount_cents": 1250, "currency": "EUR"})


async def prices_v2(request: Request) -> Response:
    return JSONResponse({"sku": request.path_params["sku"], "price": {"amount": "12.50", "currency": "EUR"}})


async def totals(request: Request) -> Response:
    regions = [{"region": "north", "sum": 1200}, {"region": "south"}, {"region": "west", "sum": 300}]
    return JSONResponse({"day": request.path_params["day"], "regions": regions})


async def hits(request: Request) -> Response:
    return JSONResponse({"hits": HITS["n"]})


app = Starlette(
    routes=[
        Route("/inventory/{sku}", counted(inventory)),
        Route("/rates/{currency}", counted(rates)),
        Route("/v1/prices/{sku}", counted(prices_v1)),
        Route("/v2/prices/{sku}", counted(prices_v2)),
        Route("/totals/{day}", counted(totals)),
        Route("/_hits", hits),
    ]
)
