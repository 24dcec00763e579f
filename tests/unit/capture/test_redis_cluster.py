"""Commands through redis-py's `RedisCluster` (sync and asyncio) are recorded against a real one-node cluster: each
once, as a `Redis` command is recorded, and none of the client's own topology discovery."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest
import redis
import redis.asyncio.cluster
from redis.cluster import RedisCluster
from redis_server import redis_cluster

import fluxrun
from fluxrun.model.values import decode

# what a cluster client sends to learn the cluster, and on each new connection: never a recorded call
TOPOLOGY = {"CLUSTER", "CLUSTER SLOTS", "CLUSTER SHARDS", "COMMAND", "COMMAND GETKEYS", "READONLY", "ASKING", "HELLO"}


@pytest.fixture(scope="module")
def cluster():
    with redis_cluster() as server:
        yield server


def recorded(captured) -> list[str]:
    """The redis calls of the one captured execution, after checking that none of them is topology traffic and
    that the capture noted no connection it did not record (the client's own sockets belong to its commands)."""
    events = captured.one()["events"]
    assert [e["call"] for e in events if e["kind"] == "unrecorded"] == []
    calls = [e for e in events if e["kind"] == "redis"]
    for event in calls:
        command = decode(event["data"].get("command") or ["?"])
        assert str(command[0]).upper() not in TOPOLOGY, event["call"]
    return [e["call"] for e in calls]


def test_sync_cluster_commands_pipelines_and_errors_are_recorded_once_like_redis_commands(captured, cluster):
    @fluxrun.capture
    def remember(token: bytes) -> None:
        # built in the request (CLUSTER SLOTS, COMMAND); refreshes run as soon as they are asked for
        client = RedisCluster(host=cluster.host, port=cluster.port, topology_refresh_min_interval=0)
        client.set("session:1", token)
        client.nodes_manager.initialize()  # a topology refresh between two commands
        client.nodes_manager._request_refresh()  # as a MOVED or a connection error asks: run by the next command
        pipe = client.pipeline()
        pipe.incr("visits").get("session:1")
        pipe.execute()
        client.get("session:1")
        client.delete("visits")  # split by slot by redis-py: one pipeline of DELs
        client.incr("session:1")  # not a number: the cluster answers with an error

    slots_asked = cluster.command_stats().get("cluster|slots", 0)
    with pytest.raises(redis.ResponseError):
        remember(b"\x00\xff\xfe")
    assert cluster.command_stats()["cluster|slots"] == slots_asked + 3  # built, refreshed, refreshed: never recorded
    assert recorded(captured) == [
        "redis SET", "redis PIPELINE [INCRBY GET]", "redis GET", "redis PIPELINE [DEL]", "redis INCRBY",
    ]  # fmt: skip
    set_, pipeline, get, delete, _incr = (e["data"] for e in captured.events("redis"))
    assert set(set_) - {"done"} == {"client", "command", "result"}  # the fields of a `Redis` command (and its
    assert set_["client"] == "redis-py"  # completion number, as every recorded call has)
    assert decode(set_["command"]) == ["SET", "session:1", b"\x00\xff\xfe"] and set_["result"] is True
    assert decode(pipeline["pipeline"]) == [["INCRBY", "visits", 1], ["GET", "session:1"]]
    assert decode(pipeline["result"]) == [1, b"\x00\xff\xfe"] and pipeline["transaction"] is False
    assert decode(get["result"]) == b"\x00\xff\xfe"
    assert decode(delete["pipeline"]) == [["DEL", "visits"]] and decode(delete["result"]) == [1]
    error = captured.events("redis")[4]["error"]
    assert error["type"] == "redis.exceptions:ResponseError" and "not an integer" in error["message"]
    assert "test_redis_cluster" in captured.events("redis")[0]["site"]  # the app's line, not redis-py's


def test_a_transactional_cluster_pipeline_is_one_multi_exec_and_its_watched_reads_are_commands(captured, cluster):
    client = RedisCluster(host=cluster.host, port=cluster.port)  # built outside the request: nothing to record
    client.set("{seat}:left", 3)

    @fluxrun.capture
    def book() -> None:
        def take(pipe) -> None:
            seats = int(pipe.get("{seat}:left"))  # while WATCHing: sent at once
            pipe.multi()
            pipe.set("{seat}:left", seats - 1)
            pipe.set("{seat}:last", "ann")

        client.transaction(take, "{seat}:left")
        raise RuntimeError("booked")

    with pytest.raises(RuntimeError):
        book()
    assert recorded(captured) == ["redis WATCH", "redis GET", "redis MULTI/EXEC [SET SET]"]
    _watch, get, transaction = (e["data"] for e in captured.events("redis"))
    assert decode(get["result"]) == b"3"
    assert decode(transaction["pipeline"]) == [["SET", "{seat}:left", 2], ["SET", "{seat}:last", "ann"]]
    assert transaction["transaction"] is True
    client.close()


def test_asyncio_cluster_commands_and_pipelines_are_recorded_without_the_initialisation(captured, cluster):
    @fluxrun.capture
    async def remember() -> None:
        client = redis.asyncio.cluster.RedisCluster.from_url(cluster.url, decode_responses=True)
        await client.initialize()  # CLUSTER SLOTS and COMMAND, in the request
        await client.hset("profile:ann", mapping={"name": "Ann"})
        async with client.pipeline() as pipe:
            await pipe.hgetall("profile:ann").ttl("profile:ann").execute()
        async with client.pipeline(transaction=True) as pipe:
            await pipe.watch("profile:ann")
            name = await pipe.hget("profile:ann", "name")
            pipe.multi()
            pipe.hset("profile:ann", "name", name.upper())
            await pipe.execute()
        await client.aclose()
        raise LookupError("no plan")

    with pytest.raises(LookupError):
        asyncio.run(remember())
    assert recorded(captured) == [
        "redis HSET", "redis PIPELINE [HGETALL TTL]", "redis WATCH", "redis HGET", "redis MULTI/EXEC [HSET]",
    ]  # fmt: skip
    events = captured.events("redis")
    assert decode(events[1]["data"]["result"]) == [{"name": "Ann"}, -1]
    assert decode(events[4]["data"]["pipeline"]) == [["HSET", "profile:ann", "name", "ANN"]]


def test_an_asyncio_cluster_client_initialised_lazily_by_its_first_command_records_that_command_only(captured, cluster):
    @fluxrun.capture
    async def count() -> None:
        client = redis.asyncio.cluster.RedisCluster(host=cluster.host, port=cluster.port)
        try:
            visits = await client.incr("visits:lazy")  # the first command initialises the client
        finally:
            await client.aclose()
        raise LookupError(f"visit {visits}")

    with pytest.raises(LookupError):
        asyncio.run(count())
    assert recorded(captured) == ["redis INCRBY"]


def test_outside_a_capture_a_cluster_client_runs_untouched_and_nothing_is_recorded(captured, cluster):
    client = RedisCluster(host=cluster.host, port=cluster.port)
    client.set("plain", "1")
    assert client.get("plain") == b"1"
    pipe = client.pipeline()
    assert pipe.set("plain", "2").get("plain").execute() == [True, b"2"]
    client.close()
    assert captured.files() == []


def test_a_cluster_client_imported_after_init_is_intercepted_and_restored_at_shutdown(keys, tmp_path) -> None:
    script = textwrap.dedent(
        f"""
        import fluxrun
        fluxrun.init(directory={str(tmp_path)!r}, capture_key={str(keys.capture)!r})
        import redis.asyncio.cluster, redis.cluster
        clients = (redis.cluster.RedisCluster, redis.asyncio.cluster.RedisCluster)
        print(all(hasattr(vars(c)["execute_command"], "__wrapped__") for c in clients))  # a replacement wraps it
        fluxrun.shutdown()
        print(any(hasattr(vars(c)["execute_command"], "__wrapped__") for c in clients))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == ["True", "False"], done.stdout
