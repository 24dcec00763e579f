"""Checkout on SQLAlchemy 2.0's asyncio ORM over asyncpg, served by uvicorn, captured by FluxRun: the stack of most
new FastAPI services (`create_async_engine` at import, `async_sessionmaker`, a session per request from a
dependency).

The pool is warm before the failing request: an earlier checkout opened its connection (and SQLAlchemy's dialect
set it up) in an execution that succeeded and was dropped. A checkout records that it started (a committed
write, its id from RETURNING), then totals the customer's items: an item with no price makes `sum` raise
TypeError and the app answer 500. `fixed_app` skips unpriced items; its database calls are the same.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy import Numeric, String, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import fluxrun

fluxrun.init()  # FLUXRUN_CAPTURE_KEY and FLUXRUN_DIR come from the environment

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql+asyncpg://orders@db.internal/orders")
engine = create_async_engine(DATABASE_URL, pool_size=1, max_overflow=0)
Sessions = async_sessionmaker(engine, expire_on_commit=False)


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


async def session() -> AsyncIterator[AsyncSession]:
    async with Sessions() as opened:
        yield opened


def create_app(*, fixed: bool) -> FastAPI:
    app = FastAPI()
    app.add_middleware(fluxrun.FluxRunMiddleware)

    @app.get("/")
    def health() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/checkout/{customer}")
    async def checkout(customer: str, db: Annotated[AsyncSession, Depends(session)]) -> dict[str, object]:
        started = Checkout(customer=customer, status="started")
        db.add(started)
        await db.commit()
        items = (await db.scalars(select(Item).where(Item.customer == customer).order_by(Item.id))).all()
        prices = [item.price for item in items if item.price is not None or not fixed]
        total = sum(prices, Decimal("0"))  # TypeError on an item without a price, until the fix
        return {"checkout": started.id, "items": len(items), "total": str(total)}

    return app


app = create_app(fixed=False)
fixed_app = create_app(fixed=True)
