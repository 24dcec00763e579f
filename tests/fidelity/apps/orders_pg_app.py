"""Checkout on SQLAlchemy ORM over PostgreSQL (psycopg 3), served by uvicorn, captured by FluxRun.

The engine is created at import from DATABASE_URL and its pool is warm before any request (the lifespan
connects it, as production pools are), so the failing request's connection was opened, and SQLAlchemy's
dialect initialised, outside the captured execution. A checkout records that it started (a committed write),
then totals the customer's items: an item with no price (a row the code did not expect) makes `sum` raise
TypeError and the app answer 500. `fixed_app` skips unpriced items; its database calls are the same.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

from fastapi import FastAPI
from sqlalchemy import Numeric, String, create_engine, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import fluxrun

fluxrun.init()  # FLUXRUN_CAPTURE_KEY and FLUXRUN_DIR come from the environment

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql+psycopg://orders@db.internal/orders")
engine = create_engine(DATABASE_URL, pool_size=2)


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(String)
    sku: Mapped[str] = mapped_column(String)
    price: Mapped[Decimal | None] = mapped_column(Numeric(10, 2))


class Checkout(Base):
    __tablename__ = "checkouts"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer: Mapped[str] = mapped_column(String)
    status: Mapped[str] = mapped_column(String)


def create_app(*, fixed: bool) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        with engine.connect() as conn:  # a warm pool: connected (and the dialect initialised) at start-up
            conn.execute(text("SELECT 1"))
        yield

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(fluxrun.FluxRunMiddleware)

    @app.get("/")
    def health() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/checkout/{customer}")
    def checkout(customer: str) -> dict[str, object]:
        with Session(engine) as session:
            started = Checkout(customer=customer, status="started")
            session.add(started)
            session.commit()
            checkout_id = started.id
            items = session.scalars(select(Item).where(Item.customer == customer).order_by(Item.id)).all()
            prices = [item.price for item in items if item.price is not None or not fixed]
            total = sum(prices, Decimal("0"))  # TypeError on an item without a price, until the fix
            return {"checkout": checkout_id, "items": len(items), "total": str(total)}

    return app


app = create_app(fixed=False)
fixed_app = create_app(fixed=True)
