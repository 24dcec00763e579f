"""Scenario tenacity: a quote route converts a price with a rate fetched through httpx, retried by tenacity
(`stop_after_attempt(3)`, `wait_exponential`): the rates feed answers 503 three times and the last error is
re-raised (httpx.HTTPStatusError). `fixed_app` quotes in the base currency when the feed is down.
"""

from __future__ import annotations

import os

import httpx
from fastapi import FastAPI
from tenacity import retry, stop_after_attempt, wait_exponential

import fluxrun

fluxrun.init()  # FLUXRUN_CAPTURE_KEY and FLUXRUN_DIR come from the environment


@retry(stop=stop_after_attempt(3), wait=wait_exponential(multiplier=0.5, max=4), reraise=True)
def fetch_rate(currency: str) -> float:
    with httpx.Client(base_url=os.environ["RATES_URL"], timeout=5) as client:
        answer = client.get(f"/rates/{currency}")
        answer.raise_for_status()
        return float(answer.json()["rate"])


def build(fixed: bool) -> FastAPI:
    app = FastAPI()
    app.add_middleware(fluxrun.FluxRunMiddleware)

    @app.get("/quotes/{amount}")
    def quote(amount: float, currency: str = "USD") -> dict[str, object]:
        try:
            rate = fetch_rate(currency)
        except httpx.HTTPStatusError:
            if not fixed:
                raise
            return {"amount": amount, "currency": "EUR", "converted": False}
        return {"amount": round(amount * rate, 2), "currency": currency, "converted": True}

    return app


app = build(fixed=False)
fixed_app = build(fixed=True)
