"""Only FluxRun's own state crosses into threads an execution starts; the app's context variables do not.

Copying the whole `contextvars` context into a new thread made anyio believe an event loop already ran
there ("Already running asyncio in this thread"), which broke blocking portals and Starlette's TestClient
used inside a captured function. Threads must start as they would without FluxRun, and still record.
"""

from __future__ import annotations

import contextvars
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import anyio
import anyio.from_thread
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

import fluxrun

app_var: contextvars.ContextVar[str] = contextvars.ContextVar("app_var", default="unset")


async def hello(request):
    return JSONResponse({"hello": request.query_params.get("name", "?")})


web_app = Starlette(routes=[Route("/hello", hello)])


@pytest.mark.anyio
async def test_starlette_s_test_client_works_inside_a_captured_async_function(captured):
    @fluxrun.capture
    async def job():
        with TestClient(web_app) as client:
            answer = client.get("/hello", params={"name": "flux"}).json()
        raise RuntimeError(f"got {answer}")

    with pytest.raises(RuntimeError, match=re.escape("got {'hello': 'flux'}")):
        await job()
    assert captured.files()


@pytest.mark.anyio
async def test_a_blocking_portal_started_inside_a_captured_function_runs(captured):
    async def double(x: int) -> int:
        await anyio.sleep(0)
        return 2 * x

    @fluxrun.capture
    async def job():
        with anyio.from_thread.start_blocking_portal() as portal:
            value = portal.call(double, 21)
        raise RuntimeError(f"portal said {value}")

    with pytest.raises(RuntimeError, match="portal said 42"):
        await job()


def test_threads_see_the_context_they_would_see_without_fluxrun_and_still_record(captured):
    def seen_in_threads() -> list[str]:
        app_var.set("set by the app")
        seen: list[str] = []
        thread = threading.Thread(target=lambda: seen.append(app_var.get()))
        thread.start()
        thread.join()
        with ThreadPoolExecutor(1) as pool:
            seen.append(pool.submit(app_var.get).result())
            pool.submit(lambda: time.time()).result()  # recorded, as the app's IO in a pool job
        return seen

    without = contextvars.Context().run(seen_in_threads)

    @fluxrun.capture
    def job():
        raise RuntimeError(repr(seen_in_threads()))

    with pytest.raises(RuntimeError) as raised:
        contextvars.Context().run(job)
    assert raised.value.args[0] == repr(without)
    assert [e["call"] for e in captured.events("time")] == ["time.time"]


def test_a_pool_worker_does_not_keep_the_execution_after_the_job(captured):
    pool = ThreadPoolExecutor(1)
    try:

        @fluxrun.capture
        def job():
            pool.submit(lambda: time.time()).result()
            raise RuntimeError("x")

        with pytest.raises(RuntimeError):
            job()
        pool.submit(lambda: time.time()).result()  # the same worker, no execution now: nothing recorded
        assert [e["call"] for e in captured.events("time")] == ["time.time"]
        from fluxrun._context import current

        assert pool.submit(current).result() is None
    finally:
        pool.shutdown()
