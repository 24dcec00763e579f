"""Checkout on Flask and psycopg2 (a `RealDictCursor`), served by gunicorn, captured by FluxRun: the classic stack.

The worker keeps one connection for its life, opened by the first request (as Flask apps on psycopg2 often do,
or Flask-SQLAlchemy's pool does), so the failing request runs on a connection opened before it. A checkout
records that it started (a committed INSERT ... RETURNING), then totals the customer's items: an item with no
price makes `sum` raise TypeError and the app answer 500. `fixed_app` skips unpriced items; its database calls
are the same.
"""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any

import psycopg2
from flask import Flask, g
from psycopg2.extras import RealDictCursor

import fluxrun

fluxrun.init()  # FLUXRUN_CAPTURE_KEY and FLUXRUN_DIR come from the environment

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://orders@db.internal/orders")
_connection: list[Any] = []


def connection() -> Any:
    if not _connection or _connection[0].closed:
        _connection[:] = [psycopg2.connect(DATABASE_URL, cursor_factory=RealDictCursor)]
    return _connection[0]


def build(fixed: bool) -> Flask:
    app = Flask(f"orders{'_fixed' if fixed else ''}")
    app.wsgi_app = fluxrun.FluxRunWSGIMiddleware(app.wsgi_app)  # type: ignore[method-assign]

    @app.get("/")
    def health() -> Any:
        return {"ok": True}

    @app.post("/checkout/<customer>")
    def checkout(customer: str) -> Any:
        conn = g.conn = connection()
        with conn, conn.cursor() as cur:  # commits the INSERT
            cur.execute("INSERT INTO checkouts (customer, status) VALUES (%s, 'started') RETURNING id", (customer,))
            checkout_id = cur.fetchone()["id"]
        with conn, conn.cursor() as cur:
            cur.execute("SELECT sku, price FROM items WHERE customer = %s ORDER BY id", (customer,))
            items = cur.fetchall()
        prices = [item["price"] for item in items if item["price"] is not None or not fixed]
        total = sum(prices, Decimal("0"))  # TypeError on an item without a price, until the fix
        return {"checkout": checkout_id, "items": len(items), "total": str(total)}

    return app


app = build(fixed=False)
fixed_app = build(fixed=True)
