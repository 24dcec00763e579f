"""Scenario PyJWT expiry: a stock route decodes the caller's JWT (PyJWT checks `exp` against the clock inside
the library), then asks the stock service, which is down.

`app` lets the 503 raise (httpx.HTTPStatusError); `fixed_app` answers "stock unknown" instead. Replayed a day
later, the token is long expired by the wall clock: only the recorded clock keeps the original path.
"""

from __future__ import annotations

import os

import httpx
import jwt
from fastapi import FastAPI, Header

import fluxrun

fluxrun.init()  # FLUXRUN_CAPTURE_KEY and FLUXRUN_DIR come from the environment


def build(fixed: bool) -> FastAPI:
    app = FastAPI()
    app.add_middleware(fluxrun.FluxRunMiddleware)

    @app.get("/stock/{sku}")
    async def stock(sku: str, authorization: str = Header()) -> dict[str, object]:
        claims = jwt.decode(authorization.removeprefix("Bearer "), os.environ["JWT_SECRET"], algorithms=["HS256"])
        async with httpx.AsyncClient(base_url=os.environ["STOCK_URL"]) as client:
            answer = await client.get(f"/inventory/{sku}", headers={"x-user": claims["sub"]})
        if fixed and answer.status_code == 503:
            return {"sku": sku, "available": None, "user": claims["sub"]}
        answer.raise_for_status()
        return {"sku": sku, "available": answer.json()["available"], "user": claims["sub"]}

    return app


app = build(fixed=False)
fixed_app = build(fixed=True)
