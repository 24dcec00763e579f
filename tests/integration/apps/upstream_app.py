"""The shop's pricing upstream: answers a price, or an unexpected payload for skus ending in 7."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def price(request: Request) -> JSONResponse:
    sku = request.path_params["sku"]
    if sku.endswith("7"):
        return JSONResponse({"amount": 10, "note": "schema changed"})
    return JSONResponse({"price": 10, "sku": sku, "order": request.headers.get("x-order")})


app = Starlette(routes=[Route("/price/{sku}", price)])
