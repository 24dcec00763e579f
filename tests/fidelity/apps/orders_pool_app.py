"""Checkout on psycopg 3 through psycopg_pool's `AsyncConnectionPool`, served by uvicorn, captured by FluxRun.

The pool is opened in the lifespan, as psycopg's documentation shows for FastAPI, and waits until its
connections are open: the pool's own tasks open them, outside any request. A checkout records that it
started (a committed write), then totals the customer's items: an item with no price (a row the code did not
expect) makes `sum` raise TypeError and the app answer 500. `fixed_app` skips unpriced items; its database
calls are the same.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

from fastapi import FastAPI
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

import fluxrun

fluxrun.init()  # FLUXRUN_CAPTURE_KEY and FLUXRUN_DIR come from the environment

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://orders@db.internal/orders")


def create_app(*, fixed: bool) -> FastAPI:
    pool = AsyncConnectionPool(DATABASE_URL, min_size=2, open=False, kwargs={"row_factory": dict_row})

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await pool.open(wait=True)
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(fluxrun.FluxRunMiddleware)

    @app.get("/")
    def health() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/checkout/{customer}")
    async def checkout(customer: str) -> dict[str, object]:
        async with pool.connection() as conn:
            started = await conn.execute(
                "INSERT INTO checkouts (customer, status) VALUES (%s, 'started') RETURNING id", (customer,)
            )
            checkout_id = (await started.fetchone())["id"]  # type: ignore[index]
            await conn.commit()
            cur = await conn.execute("SELECT sku, price FROM items WHERE customer = %s ORDER BY id", (customer,))
            items = await cur.fetchall()
        prices = [item["price"] for item in items if item["price"] is not None or not fixed]
        total = sum(prices, Decimal("0"))  # TypeError on an item without a price, until the fix
        return {"checkout": checkout_id, "items": len(items), "total": str(total)}

    return app


app = create_app(fixed=False)
fixed_app = create_app(fixed=True)
