"""A `RedisCluster` (sync and asyncio) is answered from the recording at replay: built at import, in a lifespan or
in the request, it never connects, and its commands and pipelines never reach the cluster.

Each scenario is captured against a real one-node cluster, then replayed isolated and in this process with the
cluster up (its command stats are compared before and after: no command, not even topology discovery, reached it)
and again with the cluster stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import re
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio.cluster
from fastapi import FastAPI, Request
from redis.cluster import RedisCluster
from redis_server import RedisServer, redis_cluster

import fluxrun

pytestmark = pytest.mark.slow
MODE = {"cart": "cart:1"}


@pytest.fixture
def cluster():
    with redis_cluster() as server:
        yield server


@pytest.fixture(autouse=True)
def same_cart():
    MODE["cart"] = "cart:1"


def replays_without_touching_the_cluster(
    path: Path, keys, cluster: RedisServer, app: Any, message: str, *, module: str | None = None
) -> None:
    """Replay `path` isolated and in this process with the cluster up: it reproduces `message`, every recorded
    call is answered, and the cluster's command stats move only by the INFO that reads them. Then stop the
    cluster and replay again: it still reproduces. `module`: the app's module, imported again by each replay."""
    before = cluster.command_stats()
    for isolate in (True, False):
        if module is not None:
            sys.modules.pop(module, None)
        result = fluxrun.replay.run(path, keys.replay, app=app, isolate=isolate)
        assert result.outcome == "reproduced", (isolate, result.summary())
        assert result.new.message == message
        assert result.unconsumed == [], result.unconsumed  # every recorded call was made again
    after = cluster.command_stats()
    assert after.pop("info") == before.pop("info", 0) + 1 and after == before  # no connection, no command
    cluster.stop()
    with pytest.raises(redis.ConnectionError):  # stopped: nothing answers on its port any more
        redis.Redis(host=cluster.host, port=cluster.port).ping()
    for isolate in (True, False):
        if module is not None:
            sys.modules.pop(module, None)
        result = fluxrun.replay.run(path, keys.replay, app=app, isolate=isolate)
        assert result.outcome == "reproduced", (isolate, result.summary())
        assert result.new.message == message


def captured_failure(captured, function: Callable[..., Any], *args: Any, message: str) -> Path:
    with pytest.raises(RuntimeError, match=re.escape(message)):
        outcome = function(*args)
        if asyncio.iscoroutine(outcome):
            asyncio.run(outcome)
    (path,) = captured.files()
    fluxrun.shutdown()
    redis.cluster._resolve_localhost.cache_clear()  # as in a new process: "localhost" not looked up yet
    return path


# -- built inside the request --------------------------------------------------------------------------------
@fluxrun.capture
def checkout(url: str) -> None:
    client = RedisCluster.from_url(url, topology_refresh_min_interval=0)  # built in the request: CLUSTER SLOTS...
    try:
        client.set(MODE["cart"], b"\x00\xffitems")
        client.nodes_manager.initialize()  # a topology refresh in the request: not recorded, not made at replay
        client.nodes_manager._request_refresh()  # as a MOVED asks: at capture the next command runs it
        orders = client.incr("orders")
        pipe = client.pipeline()
        pipe.hset("order:1", mapping={"cart": MODE["cart"], "state": "new"})
        pipe.expire("order:1", 3600)
        pipe.execute()
        client.delete(MODE["cart"])
        try:
            client.hincrby("order:1", "state", 1)
        except redis.ResponseError as exc:  # the recorded error, raised again as the same class
            note = type(exc).__name__
        quota = client.get("quota")  # None: nobody set it
    finally:
        client.close()
    raise RuntimeError(f"order {orders}: {note}, quota {quota}")


@fluxrun.capture
async def checkout_async(url: str) -> None:
    async with redis.asyncio.cluster.RedisCluster.from_url(url) as client:  # initialised on entry: connects
        await client.set(MODE["cart"], "items")
        orders = await client.incr("orders")
        async with client.pipeline() as pipe:
            await pipe.hset("order:1", "state", "new").expire("order:1", 3600).execute()
        await client.delete(MODE["cart"])
        quota = await client.get("quota")
    raise RuntimeError(f"order {orders}: quota {quota}")


@pytest.mark.parametrize(
    ("function", "message"),
    [(checkout, "order 1: ResponseError, quota None"), (checkout_async, "order 1: quota None")],
    ids=["sync", "async"],
)
def test_a_cluster_client_built_in_the_request_replays_without_connecting(captured, keys, cluster, function, message):
    url = cluster.url.replace("127.0.0.1", "localhost")  # a node named `localhost` is looked up when it is made
    path = captured_failure(captured, function, url, message=message)
    replays_without_touching_the_cluster(path, keys, cluster, function, message)


def test_a_different_cluster_command_is_a_divergence_showing_both(captured, keys, cluster):
    path = captured_failure(captured, checkout, cluster.url, message="order 1")
    MODE["cart"] = "cart:2"
    with pytest.raises(fluxrun.ReplayDivergence) as raised:
        fluxrun.replay.run(path, keys.replay, app=checkout, isolate=False)
    message = str(raised.value)
    assert "redis SET has no recorded answer" in message
    assert "in checkout" in message  # the app's line, not redis-py's
    assert "next recorded redis call: redis SET" in message
    assert "- ['SET', 'cart:1'," in message and "+ ['SET', 'cart:2'," in message


@fluxrun.capture
def listen(url: str) -> None:
    client = RedisCluster.from_url(url)
    try:
        client.set("news:last", 1)
        pubsub = client.pubsub()
        pubsub.subscribe("news")  # not recorded: the messages come when the server pushes them
        pubsub.close()
    finally:
        client.close()
    raise RuntimeError("subscribed")


def test_cluster_pub_sub_is_noted_at_capture_and_refused_by_name_at_replay(captured, keys, cluster):
    path = captured_failure(captured, listen, cluster.url, message="subscribed")
    notes = [e["call"] for e in captured.events("unrecorded")]
    assert "redis cluster pub/sub SUBSCRIBE" in notes, notes  # the bundle says up front it is not replay-ready
    with pytest.raises(
        fluxrun.LiveIOBlocked, match=re.escape("replay blocked a redis cluster pub/sub call (SUBSCRIBE)")
    ):
        fluxrun.replay.run(path, keys.replay, app=listen, isolate=False)


# -- transactions ----------------------------------------------------------------------------------------------
@fluxrun.capture
def book_seat(url: str) -> None:
    client = RedisCluster.from_url(url)
    client.set("{seat}:left", 3)

    def take(pipe: Any) -> int:
        seats = int(pipe.get("{seat}:left"))  # sent at once while the pipeline WATCHes
        pipe.multi()
        pipe.set("{seat}:left", seats - 1)
        return seats

    try:
        seen = client.transaction(take, "{seat}:left", value_from_callable=True)
        left = client.get("{seat}:left")
    finally:
        client.close()
    raise RuntimeError(f"saw {seen}, left {left}")


@fluxrun.capture
async def book_seat_async(url: str) -> None:
    client = redis.asyncio.cluster.RedisCluster.from_url(url)
    try:
        await client.set("{seat}:left", 3)
        async with client.pipeline(transaction=True) as pipe:
            await pipe.watch("{seat}:left")
            seats = int(await pipe.get("{seat}:left"))
            pipe.multi()
            pipe.set("{seat}:left", seats - 1)
            await pipe.execute()
        left = await client.get("{seat}:left")
    finally:
        await client.aclose()
    raise RuntimeError(f"saw {seats}, left {left}")


@pytest.mark.parametrize("function", [book_seat, book_seat_async], ids=["sync", "async"])
def test_a_watched_cluster_transaction_replays_without_connecting(captured, keys, cluster, function):
    message = "saw 3, left b'2'"
    path = captured_failure(captured, function, cluster.url, message=message)
    replays_without_touching_the_cluster(path, keys, cluster, function, message)


# -- built at import -------------------------------------------------------------------------------------------
APP_MODULE = """
import redis.asyncio.cluster
import redis.cluster

import fluxrun

cache = redis.cluster.RedisCluster.from_url({url!r})  # at import: CLUSTER SLOTS and COMMAND, outside any request
lazy_cache = redis.asyncio.cluster.RedisCluster.from_url({url!r})  # connects when first used


@fluxrun.capture
def visit():
    cache.set("visits:page", 41)
    visits = cache.incr("visits:page")
    raise RuntimeError(f"visit {{visits}}")


@fluxrun.capture
async def visit_async():
    try:
        await lazy_cache.set("visits:page", 41)
        visits = await lazy_cache.incr("visits:page")
    finally:
        await lazy_cache.aclose()  # its connections belong to this request's loop
    raise RuntimeError(f"visit {{visits}}")
"""


@pytest.mark.parametrize("entry", ["visit", "visit_async"])
def test_a_cluster_client_built_at_import_replays_without_connecting(
    captured, keys, cluster, tmp_path, monkeypatch, entry
):
    name = f"cluster_app_{entry}"
    (tmp_path / f"{name}.py").write_text(APP_MODULE.format(url=cluster.url))
    monkeypatch.syspath_prepend(tmp_path)
    try:
        module = importlib.import_module(name)
        path = captured_failure(captured, getattr(module, entry), message="visit 42")
        module.cache.close()
        # each replay imports the app again, as a replay process does: its clients are built during the replay
        replays_without_touching_the_cluster(path, keys, cluster, f"{name}:{entry}", "visit 42", module=name)
    finally:
        sys.modules.pop(name, None)


# -- built in the app's lifespan ---------------------------------------------------------------------------------
LIFESPAN: dict[str, Any] = {}


@contextlib.asynccontextmanager
async def cluster_client(app: FastAPI) -> AsyncIterator[None]:
    client = redis.asyncio.cluster.RedisCluster.from_url(LIFESPAN["url"])
    await client.initialize()  # the start-up connects, outside any request
    app.state.cache = client
    yield
    await client.aclose()


lifespan_api = FastAPI(lifespan=cluster_client)
lifespan_api.add_middleware(fluxrun.FluxRunMiddleware)


@lifespan_api.post("/visit/{page}")
async def visit_page(page: str, request: Request) -> dict[str, int]:
    cache = request.app.state.cache
    visits = await cache.incr(f"visits:{page}")
    async with cache.pipeline() as pipe:
        await pipe.set(f"last:{page}", visits).get("quota").execute()
    raise RuntimeError(f"visit {visits}")


def test_a_cluster_client_built_in_the_lifespan_replays_without_connecting(captured, keys, cluster):
    LIFESPAN["url"] = cluster.url

    async def call() -> int:
        async with lifespan_api.router.lifespan_context(lifespan_api):
            transport = httpx.ASGITransport(app=lifespan_api, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
                return (await client.post("/visit/home")).status_code

    assert asyncio.run(call()) == 500
    (path,) = captured.files()
    fluxrun.shutdown()
    replays_without_touching_the_cluster(path, keys, cluster, lifespan_api, "visit 1")
