"""Scenario concurrency: a FastAPI app whose routes fan out to the storefront with `asyncio.TaskGroup` and with
a `ThreadPoolExecutor` whose workers do CPU work before their first call. STOREFRONT_URL is read per request.

- `/users/{user}/summary`: a TaskGroup of three httpx calls. The recommender answers 500 last: its
  `raise_for_status` fails the group, ExceptionGroup, 500.
- `/users/{user}/summary-fast-fail`: the recommender answers 500 first (`?delay=0.005`), while the other two
  calls are still in flight: the group cancels them, and the execution ends with them pending.
- `/users/{user}/report`: `ThreadPoolExecutor.map` over three paths; each worker first scores a different
  amount of CPU work (the first submitted does the most, so workers make their first call in the reverse
  order of their creation), then fetches with one shared `httpx.Client`. The recommender's 500 raises out
  of `map`, 500.

`fixed_app` renders the pages without recommendations when the recommender fails.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from fastapi import FastAPI

import fluxrun

fluxrun.init()  # FLUXRUN_CAPTURE_KEY and FLUXRUN_DIR come from the environment

WORK = {0: 300_000, 1: 120_000, 2: 0}  # CPU before the first call, by submission order


def score(rounds: int) -> int:
    return sum(i * i % 7 for i in range(rounds))


def build(fixed: bool) -> FastAPI:
    app = FastAPI()
    app.add_middleware(fluxrun.FluxRunMiddleware)

    async def grouped(user: str, recommendations: str) -> dict[str, Any]:
        answers: dict[str, Any] = {}
        async with httpx.AsyncClient(base_url=os.environ["STOREFRONT_URL"], timeout=5) as client:

            async def fetch(name: str, path: str) -> None:
                response = await client.get(path)
                response.raise_for_status()
                answers[name] = response.json()

            async def recommend() -> None:
                try:
                    await fetch("recommended", recommendations)
                except httpx.HTTPStatusError:
                    if not fixed:
                        raise
                    answers["recommended"] = {"items": []}

            async with asyncio.TaskGroup() as group:
                group.create_task(fetch("profile", f"/profile/{user}"))
                group.create_task(fetch("orders", f"/orders/{user}"))
                group.create_task(recommend())
        return {
            "name": answers["profile"]["name"],
            "orders": len(answers["orders"]["orders"]),
            "recommended": answers["recommended"]["items"],
        }

    @app.get("/users/{user}/summary")
    async def summary(user: str) -> dict[str, Any]:
        return await grouped(user, f"/recommendations/{user}")

    @app.get("/users/{user}/summary-fast-fail")
    async def summary_fast_fail(user: str) -> dict[str, Any]:
        return await grouped(user, f"/recommendations/{user}?delay=0.005")

    @app.get("/users/{user}/report")
    def report(user: str) -> dict[str, Any]:
        paths = [f"/profile/{user}", f"/orders/{user}", f"/recommendations/{user}?delay=0.01"]
        with httpx.Client(base_url=os.environ["STOREFRONT_URL"], timeout=5) as client:

            def fetch(job: tuple[int, str]) -> Any:
                index, path = job
                score(WORK[index])
                response = client.get(path)
                if fixed and index == 2 and response.status_code >= 500:
                    return {"items": []}
                response.raise_for_status()
                return response.json()

            with ThreadPoolExecutor(max_workers=3) as pool:
                profile, orders, recommended = pool.map(fetch, enumerate(paths))
        return {"name": profile["name"], "orders": len(orders["orders"]), "recommended": recommended["items"]}

    return app


app = build(fixed=False)
fixed_app = build(fixed=True)
