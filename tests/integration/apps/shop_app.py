"""A small shop served by uvicorn in its own process, captured by FluxRun from FLUXRUN_* settings."""

from __future__ import annotations

import logging
import os

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

import fluxrun

fluxrun.init()  # FLUXRUN_CAPTURE_KEY and FLUXRUN_DIR come from the environment

app = FastAPI()
app.add_middleware(fluxrun.FluxRunMiddleware)
log = logging.getLogger("shop")
UPSTREAM = os.environ["SHOP_UPSTREAM"]


@fluxrun.boundary("db.load_order")
def load_order(order_id: int) -> dict[str, object]:
    return {"id": order_id, "sku": f"sku-{order_id}"}


@app.get("/orders/{order_id}")
async def get_order(order_id: int) -> dict[str, object]:
    order = load_order(order_id)
    currency = os.environ.get("SHOP_CURRENCY", "EUR")
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"{UPSTREAM}/price/{order['sku']}", headers={"x-order": str(order_id)})
    log.warning("priced order %s", order_id)
    quote = answer.json()
    return {"order": order_id, "total": quote["price"], "currency": currency}  # KeyError on a bad quote


@app.post("/checkout")
async def checkout(request: Request) -> JSONResponse:
    body = await request.json()
    if body.get("card"):
        return JSONResponse({"error": f"card {body['card']} declined"}, status_code=502)
    return JSONResponse({"ok": True})


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
