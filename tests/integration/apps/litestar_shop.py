"""A Litestar shop in the raw ASGI form (`app = FluxRunMiddleware(app)`), served by uvicorn in its own process.

Litestar turns an exception into its own 500 answer; FluxRun hears it through Litestar's `after_exception`
hook, so the bundle records the exception type and the route template, not only the status."""

from __future__ import annotations

import os
from typing import Annotated

from litestar import Litestar, get
from litestar.params import PathParameter

import fluxrun

if os.environ.get("FLUXRUN_CAPTURE_KEY"):
    fluxrun.init()  # FLUXRUN_CAPTURE_KEY and FLUXRUN_DIR come from the environment; a replay imports it bare


@fluxrun.boundary("db.load_order")
def load_order(order_id: int) -> dict[str, object]:
    return {"id": order_id, "sku": f"sku-{order_id}"}


@get("/")
async def index() -> str:
    return "shop"


@get("/orders/{order_id:int}")
async def get_order(order_id: Annotated[int, PathParameter()]) -> dict[str, object]:
    order = load_order(order_id)
    return {"order": order_id, "price": order["price"]}  # KeyError: the order has no price


@get("/orders/{order_id:int}", name="fixed")
async def get_order_fixed(order_id: Annotated[int, PathParameter()]) -> dict[str, object]:
    order = load_order(order_id)
    return {"order": order_id, "price": order.get("price", 0)}


app = Litestar([index, get_order])
app = fluxrun.FluxRunMiddleware(app)  # the README's raw ASGI form: the module attribute is the middleware

fixed_app = fluxrun.FluxRunMiddleware(Litestar([index, get_order_fixed]))
