"""FastAPI on Redis Cluster (redis-py's asyncio `RedisCluster`), served by uvicorn, against a real one-node cluster.

The client discovers the cluster in the app's lifespan. A checkout counts the attempt in a pipeline (a write),
reads the cart and its prices, and fails on a sku with no price: 500. The bundle holds the request's commands
only (no discovery). A replay with the cluster up leaves its command stats as they were; then the cluster is
stopped and the replay runs offline in a fresh process without REDIS_URL, a day later, three times: the lifespan
builds and initialises the client without a connection attempt, and every command is answered from the
recording. The fixed app then replays as `fixed`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from harness import app_server, one_bundle, replay_offline
from redis_server import RedisServer, redis_cluster

from fluxrun.bundle import open_bundle

pytestmark = pytest.mark.slow

APP = "cart_cluster_app"
SEED = [
    ("HSET", "cart:c-1", "sku-a", "2", "sku-b", "1"),
    ("HSET", "cart:c-7", "sku-a", "1", "sku-z", "3"),  # sku-z has no price
    ("SET", "{price}:sku-a", "450"),
    ("SET", "{price}:sku-b", "1200"),
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisServer]:
    with redis_cluster() as server:
        for command in SEED:
            server.raw(*command)
        yield server


@pytest.fixture(scope="module")
def capture(tmp_path_factory, keys, cluster):  # type: ignore[no-untyped-def]
    capture_dir = tmp_path_factory.mktemp("fastapi-redis-cluster")
    with app_server(f"{APP}:app", keys, capture_dir, {"REDIS_URL": cluster.url}) as url:
        fine = httpx.post(f"{url}/checkout/c-1", timeout=30)
        failed = httpx.post(f"{url}/checkout/c-7", timeout=30)
        bundle = one_bundle(capture_dir)
    return bundle, fine, failed


def stats_without_info(cluster: RedisServer) -> dict[str, int]:
    stats = cluster.command_stats()
    stats.pop("info", None)  # the reads of the stats themselves
    return stats


@pytest.fixture(scope="module")
def replays(capture, keys, cluster) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    bundle, _, _ = capture
    before = stats_without_info(cluster)
    up = replay_offline(bundle, f"{APP}:app", keys, env_without=("REDIS_URL",), times=1)
    after = stats_without_info(cluster)
    cluster.stop()
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host=cluster.host, port=cluster.port).ping()
    offline = replay_offline(bundle, f"{APP}:app", keys, env_without=("REDIS_URL",), times=3)
    return {"up": up, "stats": (before, after), "offline": offline}


def test_the_server_failed_on_the_unpriced_sku(capture) -> None:  # type: ignore[no-untyped-def]
    _, fine, failed = capture
    assert fine.status_code == 200 and fine.json() == {"attempt": 1, "items": 2, "total": 2100}
    assert failed.status_code == 500


def test_the_bundle_holds_the_requests_commands_and_no_discovery(capture, keys) -> None:  # type: ignore[no-untyped-def]
    bundle, _, _ = capture
    payload = open_bundle(bundle.read_bytes(), keys.replay_key).payload
    calls = [e["call"] for e in payload["events"] if e["kind"] == "redis"]
    assert calls == ["redis PIPELINE [INCRBY SET]", "redis HGETALL", "redis MGET"]  # redis-py sends incr as INCRBY
    assert payload["outcome"]["error"]["type"] == "builtins:TypeError"
    assert not [e for e in payload["events"] if "CLUSTER" in str(e.get("call")) or "COMMAND" in str(e.get("call"))]


def test_a_replay_with_the_cluster_up_sends_it_nothing(replays) -> None:  # type: ignore[no-untyped-def]
    replays["up"].assert_reproduced(times=1, max_seconds=2.0)
    before, after = replays["stats"]
    assert after == before  # not a command, not even the client's discovery (cluster|slots, command)


def test_replay_offline_a_day_later_reproduces_three_times(replays) -> None:  # type: ignore[no-untyped-def]
    offline = replays["offline"]
    offline.assert_reproduced(times=3, max_seconds=2.0)
    offline.assert_every_recorded_call_made()
    for run in offline.runs:
        assert run["status"] == 500 and run["new"]["error_type"] == "builtins:TypeError"
        assert not run.get("warnings"), run.get("warnings")  # the lifespan ran: the client built without connecting


def test_the_fixed_app_passes_the_guard(capture, keys, replays) -> None:  # type: ignore[no-untyped-def]
    bundle, _, _ = capture
    fixed = replay_offline(bundle, f"{APP}:fixed_app", keys, env_without=("REDIS_URL",), expect="fixed", times=1)
    run = fixed.assert_fixed()
    assert run["status"] == 200 and json.loads(run["body"]) == {"attempt": 1, "items": 2, "total": 450}
