"""A cart service on Redis Cluster through redis-py's asyncio `RedisCluster`, served by uvicorn, captured by FluxRun.

The client is built from REDIS_URL and initialised in the lifespan (it discovers the cluster there, outside any
request), as FastAPI apps on a managed Redis Cluster do. A checkout counts the attempt and stamps it in one
pipeline, reads the cart (a hash of sku -> quantity) and the prices of its skus (MGET of keys in one hash slot),
then totals it: a sku with no price makes `int(None)` raise TypeError and the app answer 500. `fixed_app` skips
unpriced skus; its Redis calls are the same.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from redis.asyncio.cluster import RedisCluster

import fluxrun

fluxrun.init()  # FLUXRUN_CAPTURE_KEY and FLUXRUN_DIR come from the environment

REDIS_URL = os.environ.get("REDIS_URL", "redis://cache.internal:6379/0")


def create_app(*, fixed: bool) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.cache = RedisCluster.from_url(REDIS_URL, decode_responses=True)
        await app.state.cache.initialize()  # CLUSTER SLOTS and COMMAND, outside any request
        yield
        await app.state.cache.aclose()

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(fluxrun.FluxRunMiddleware)

    @app.get("/")
    def health() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/checkout/{cart}")
    async def checkout(cart: str, request: Request) -> dict[str, object]:
        cache: RedisCluster = request.app.state.cache
        async with cache.pipeline(transaction=False) as pipe:
            pipe.incr(f"checkouts:{cart}").set(f"last-checkout:{cart}", "started")
            attempt, _ = await pipe.execute()
        quantities = await cache.hgetall(f"cart:{cart}")
        skus = sorted(quantities)
        prices = await cache.mget([f"{{price}}:{sku}" for sku in skus])  # one hash tag: one slot
        total = sum(
            int(price) * int(quantities[sku]) for sku, price in zip(skus, prices, strict=True) if price or not fixed
        )  # TypeError on a sku without a price, until the fix
        return {"attempt": attempt, "items": len(skus), "total": total}

    return app


app = create_app(fixed=False)
fixed_app = create_app(fixed=True)
