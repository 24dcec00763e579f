"""Scenario Litestar in the raw ASGI form: a catalogue's price route under uvicorn, wrapped as the README shows
(`app = fluxrun.FluxRunMiddleware(app)`, so the module attribute is the middleware, not the Litestar app).

PRICING_URL and PRICING_API_KEY are read inside the request, and the quote is asked for "as of now" (the
clock in the query string), so a replay must serve the clock from the tape to send the same request. The
v1 price API's schema moved on (`amount_cents`, no `price`): KeyError, which Litestar turns into its own 500
answer. `fixed_app` reads `amount_cents`.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

import httpx
from litestar import Litestar, get

import fluxrun

fluxrun.init()  # FLUXRUN_CAPTURE_KEY and FLUXRUN_DIR come from the environment


def build(fixed: bool) -> Litestar:
    @get("/products/{sku:str}/price")
    async def price(sku: str) -> dict[str, object]:
        as_of = datetime.now(UTC).replace(microsecond=0).isoformat()
        headers = {"Authorization": f"Bearer {os.environ['PRICING_API_KEY']}"}
        async with httpx.AsyncClient(base_url=os.environ["PRICING_URL"], headers=headers) as client:
            quote = (await client.get(f"/v1/prices/{sku}", params={"as_of": as_of})).json()
        if fixed and "price" not in quote:
            return {"sku": sku, "price": f"{quote['amount_cents'] / 100:.2f}", "currency": quote["currency"]}
        return {"sku": sku, "price": quote["price"], "currency": quote["currency"]}

    @get("/")
    async def index() -> str:
        return "catalogue"

    return Litestar([index, price])


app = fluxrun.FluxRunMiddleware(build(fixed=False))  # the raw ASGI form: replay must find `app` by itself
fixed_app = fluxrun.FluxRunMiddleware(build(fixed=True))
