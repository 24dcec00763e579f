"""A small shop: prices an order through an upstream service and fails when the upstream's answer changes shape.

`fluxrun demo` copies this file into its folder as `demo_shop.py`, serves it with uvicorn, and later applies
the fix to that copy (`BUG` and `FIX` in run.py), the way a developer would edit their own code.
"""

from __future__ import annotations

import logging
import os
import uuid

import httpx
from fastapi import FastAPI

import fluxrun

fluxrun.init()  # FLUXRUN_DSN, FLUXRUN_CAPTURE_KEY, FLUXRUN_DIR come from the environment

log = logging.getLogger("shop")
app = FastAPI(title="demo shop")
app.add_middleware(fluxrun.FluxRunMiddleware)


@fluxrun.boundary("db.load_order")
def load_order(order_id: int) -> dict[str, object]:
    """Stands in for a database read; declared as a boundary so replay serves it from the recording."""
    return {"id": order_id, "sku": f"sku-{order_id}", "quantity": 2}


@app.get("/orders/{order_id}/total")
async def order_total(order_id: int) -> dict[str, object]:
    order = load_order(order_id)
    upstream = os.environ.get("SHOP_PRICING_URL", "http://127.0.0.1:8001")
    quote_id = uuid.uuid4().hex[:8]
    async with httpx.AsyncClient(base_url=upstream, timeout=5) as client:
        answer = await client.get(f"/price/{order['sku']}", params={"quote": quote_id})
    log.warning("priced %s with quote %s", order["sku"], quote_id)
    price = answer.json()["unit_price"]  # the upstream renamed this field for some skus: KeyError
    return {"order": order_id, "total": price * int(order["quantity"])}  # type: ignore[call-overload]
