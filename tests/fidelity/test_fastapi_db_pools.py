"""FastAPI on a connection pool over a real PostgreSQL, served by uvicorn: psycopg_pool's AsyncConnectionPool
(`orders_pool_app`) and asyncpg's own pool (`orders_asyncpg_pool_app`).

Each pool is opened in the app's lifespan and connects there or in its own tasks, outside any request. A
checkout commits a write, then fails on an item with no price: 500. PostgreSQL is stopped, and the replay runs
offline in a fresh process without DATABASE_URL, a day later, three times: the lifespan opens the pool without
a connection attempt, and the request's connection is answered from the recording. The fixed app then replays
as `fixed` with PostgreSQL up and reachable; the write-counting trigger shows that no replay wrote.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from harness import app_server, assert_stopped, one_bundle, replay_offline
from postgres import Cluster
from shop_db import pg_ctl, restart, shop_cluster, writes

from fluxrun.bundle import open_bundle

pytestmark = pytest.mark.slow

PASSWORD = "pool-Secr3t-fidelity"  # trust auth ignores it; it must still never be recorded


@pytest.fixture(scope="module")
def database() -> Iterator[Cluster]:
    with shop_cluster() as cluster:
        yield cluster


# each app's module, and the database calls its checkout makes after the pool's connect
APPS = {
    "orders_pool_app": ["execute", "commit", "execute", "commit"],
    "orders_asyncpg_pool_app": ["fetchval", "fetch", "reset"],  # the pool resets what it takes back
}


@pytest.fixture(scope="module", params=sorted(APPS))
def capture(request, tmp_path_factory, keys, database):  # type: ignore[no-untyped-def]
    module = request.param
    try:
        before = writes(database)
    except Exception:  # stopped by the scenario before this one
        restart(database)
        before = writes(database)
    capture_dir = tmp_path_factory.mktemp(module)
    env = {"DATABASE_URL": f"postgresql://postgres:{PASSWORD}@127.0.0.1:{database.port}/postgres"}
    with app_server(f"{module}:app", keys, capture_dir, env) as url:
        fine = httpx.post(f"{url}/checkout/c-1", timeout=30)
        failed = httpx.post(f"{url}/checkout/c-7", timeout=30)
        bundle = one_bundle(capture_dir)
    written = writes(database)
    pg_ctl(database, "-m", "fast", "stop")  # PostgreSQL stopped: the replays run offline
    assert_stopped(f"http://127.0.0.1:{database.port}")
    return module, bundle, fine, failed, written - before, written


def test_the_server_failed_on_the_unpriced_item(capture) -> None:  # type: ignore[no-untyped-def]
    _, _, fine, failed, added, _ = capture
    assert fine.status_code == 200 and fine.json()["total"] == "16.70"
    assert failed.status_code == 500
    assert added == 2  # one committed checkout row per request


def test_the_bundle_holds_the_pools_connection_and_no_password(capture, keys) -> None:  # type: ignore[no-untyped-def]
    module, bundle, _, _, _, _ = capture
    payload = open_bundle(bundle.read_bytes(), keys.replay_key).payload
    assert PASSWORD not in json.dumps(payload)
    db = [e for e in payload["events"] if e["kind"] == "db"]
    assert db[0]["data"]["op"] == "connect" and db[0]["data"]["opened"] == "before"  # opened by the pool
    assert [e["data"]["op"] for e in db[1:]] == APPS[module]
    assert payload["outcome"]["error"]["type"] == "builtins:TypeError"


@pytest.fixture(scope="module")
def replays(capture, keys):  # type: ignore[no-untyped-def]
    module, bundle, _, _, _, _ = capture
    return replay_offline(bundle, f"{module}:app", keys, env_without=("DATABASE_URL",), times=3)


def test_replay_offline_a_day_later_reproduces_three_times(replays) -> None:  # type: ignore[no-untyped-def]
    replays.assert_reproduced(times=3, max_seconds=2.0)
    for run in replays.runs:
        assert run["status"] == 500 and run["new"]["error_type"] == "builtins:TypeError"
        assert not run.get("warnings"), run.get("warnings")  # the lifespan ran: the pool opened at replay


def test_the_guard_holds_strictly(replays) -> None:  # type: ignore[no-untyped-def]
    replays.assert_every_recorded_call_made()


def test_the_fixed_app_passes_the_guard_and_no_replay_wrote_anything(capture, keys, database) -> None:  # type: ignore[no-untyped-def]
    module, bundle, _, _, _, written = capture
    restart(database)  # up and reachable: the hardest case for "nothing is written"
    replays = replay_offline(
        bundle, f"{module}:fixed_app", keys, env_without=("DATABASE_URL",), expect="fixed", times=1
    )
    run = replays.assert_fixed()
    assert run["status"] == 200 and json.loads(run["body"])["total"] == "12.50"
    assert writes(database) == written  # the four replays wrote nothing
