"""An app that fails on request, captured by FluxRun and shipped to FLUXRUN_DSN (tests/e2e/test_shipping.py)."""

from __future__ import annotations

from fastapi import FastAPI

import fluxrun

fluxrun.init()  # FLUXRUN_DSN, FLUXRUN_CAPTURE_KEY and FLUXRUN_DIR come from the environment

app = FastAPI()
app.add_middleware(fluxrun.FluxRunMiddleware)


@app.get("/")
def index() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/ok")
def ok() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/fail/{n}")
def fail(n: int) -> dict[str, str]:
    raise RuntimeError(f"failure {n}")


@app.get("/fluxrun/stats")
def stats() -> dict[str, int]:
    return fluxrun.stats()
