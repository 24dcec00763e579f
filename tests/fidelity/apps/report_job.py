"""Scenario Starlette TestClient inside a captured function: a nightly job (its own process) builds a report by
calling a Starlette app in-process through `TestClient`, which runs the app on an anyio blocking portal in a
thread of its own; that app fetches the day's totals with httpx. One region lacks its `sum`: KeyError.

`nightly_report` is the job as it failed; `nightly_report_fixed` counts a missing sum as 0.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

import fluxrun

fluxrun.init()  # FLUXRUN_CAPTURE_KEY and FLUXRUN_DIR come from the environment


def reports_app(fixed: bool) -> Starlette:
    async def report(request: Request) -> Response:
        day = request.path_params["day"]
        async with httpx.AsyncClient(base_url=os.environ["TOTALS_URL"]) as client:
            totals = (await client.get(f"/totals/{day}")).json()
        sums = [r.get("sum", 0) if fixed else r["sum"] for r in totals["regions"]]
        return JSONResponse({"day": day, "total": sum(sums)})

    return Starlette(routes=[Route("/reports/{day}", report)])


def job(fixed: bool) -> Callable[[str], Any]:
    app = reports_app(fixed)

    @fluxrun.capture
    def nightly_report(day: str) -> Any:
        with TestClient(app) as client:  # a blocking portal: the app runs on an event loop in another thread
            return client.get(f"/reports/{day}").json()

    return nightly_report


nightly_report = job(fixed=False)
nightly_report_fixed = job(fixed=True)


def main(day: str) -> None:
    try:
        print(nightly_report(day))
    finally:
        fluxrun.flush(10)


if __name__ == "__main__":
    main(sys.argv[1])
