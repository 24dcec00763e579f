"""Checkout on asyncpg through its own pool (`asyncpg.create_pool`), served by uvicorn, captured by FluxRun.

The pool is created in the lifespan and kept on the app's state, as FastAPI apps on asyncpg do: it connects
there, outside any request. A checkout records that it started (a committed write), then totals the customer's
items: an item with no price makes `sum` raise TypeError and the app answer 500. `fixed_app` skips unpriced
items; its database calls are the same.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

import asyncpg
from fastapi import FastAPI, Request

import fluxrun

fluxrun.init()  # FLUXRUN_CAPTURE_KEY and FLUXRUN_DIR come from the environment

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://orders@db.internal/orders")


def create_app(*, fixed: bool) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await asyncpg.create_pool(DATABASE_URL, min_size=2)
        yield
        await app.state.pool.close()

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(fluxrun.FluxRunMiddleware)

    @app.get("/")
    def health() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/checkout/{customer}")
    async def checkout(customer: str, request: Request) -> dict[str, object]:
        async with request.app.state.pool.acquire() as conn:
            checkout_id = await conn.fetchval(
                "INSERT INTO checkouts (customer, status) VALUES ($1, 'started') RETURNING id", customer
            )
            items = await conn.fetch("SELECT sku, price FROM items WHERE customer = $1 ORDER BY id", customer)
        prices = [item["price"] for item in items if item["price"] is not None or not fixed]
        total = sum(prices, Decimal("0"))  # TypeError on an item without a price, until the fix
        return {"checkout": checkout_id, "items": len(items), "total": str(total)}

    return app


app = create_app(fixed=False)
fixed_app = create_app(fixed=True)
