"""The pricing service the shop calls. For sku-7 it answers in a new schema the shop does not expect."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def price(request: Request) -> JSONResponse:
    sku = request.path_params["sku"]
    if sku == "sku-7":
        return JSONResponse({"price": {"amount": 1250, "currency": "EUR"}, "sku": sku})
    return JSONResponse({"unit_price": 12.5, "sku": sku})


app = Starlette(routes=[Route("/price/{sku}", price)])
