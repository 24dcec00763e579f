"""Scenario a fix that needs a supplied answer: a price route reads `price` from the v1 price API, whose
schema moved on (`amount_cents`): KeyError. The fix falls back to the v2 API, a fetch the recording never saw.
"""

from __future__ import annotations

import os

import httpx
from fastapi import FastAPI

import fluxrun

fluxrun.init()  # FLUXRUN_CAPTURE_KEY and FLUXRUN_DIR come from the environment


def build(fixed: bool) -> FastAPI:
    app = FastAPI()
    app.add_middleware(fluxrun.FluxRunMiddleware)

    @app.get("/items/{sku}/price")
    async def price(sku: str) -> dict[str, object]:
        async with httpx.AsyncClient(base_url=os.environ["PRICING_URL"]) as client:
            quote = (await client.get(f"/v1/prices/{sku}")).json()
            if fixed and "price" not in quote:
                fresh = (await client.get(f"/v2/prices/{sku}")).json()  # the new API: never called in production
                return {"sku": sku, "price": fresh["price"]["amount"], "currency": fresh["price"]["currency"]}
        return {"sku": sku, "price": quote["price"], "currency": quote["currency"]}

    return app


app = build(fixed=False)
fixed_app = build(fixed=True)
