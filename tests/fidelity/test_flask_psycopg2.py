"""Flask on psycopg2 (a `RealDictCursor`) and a real PostgreSQL, served by gunicorn, its connection warm.

A first checkout succeeds (its execution is dropped) and opens the worker's connection; the second fails on an
item with no price: 500, on that connection. PostgreSQL is stopped, and the replay runs offline in a fresh
process without DATABASE_URL, a day later, three times: the connection's recorded connect answers the fresh
process's, and every recorded call is made. The fixed app then replays as `fixed` with PostgreSQL up, and the
write-counting trigger shows that no replay wrote.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from client_harness import capture_env, gunicorn_app
from harness import assert_stopped, one_bundle, replay_offline
from postgres import Cluster
from servers import free_port
from shop_db import pg_ctl, restart, shop_cluster, writes

from fluxrun.bundle import open_bundle

pytestmark = pytest.mark.slow

APP = "orders_flask_psycopg2_app"
PASSWORD = "psycopg2-Secr3t"  # trust auth ignores it; it must still never be recorded


@pytest.fixture(scope="module")
def database() -> Iterator[Cluster]:
    with shop_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def capture(tmp_path_factory, keys, database):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("flask-psycopg2")
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{database.port}/postgres"
    before = writes(database)
    with gunicorn_app(f"{APP}:app", free_port(), capture_env(keys, folder, {"DATABASE_URL": url})) as app:
        fine = httpx.post(f"{app.url}/checkout/c-1", timeout=30)  # opens the worker's connection: not kept
        failed = httpx.post(f"{app.url}/checkout/c-7", timeout=30)
        bundle = one_bundle(folder)
    written = writes(database)
    pg_ctl(database, "-m", "fast", "stop")  # PostgreSQL stopped: the replays run offline
    assert_stopped(f"http://127.0.0.1:{database.port}")
    return bundle, fine, failed, written - before, written


def test_the_server_failed_on_the_unpriced_item(capture) -> None:  # type: ignore[no-untyped-def]
    _, fine, failed, added, _ = capture
    assert fine.status_code == 200 and fine.json()["total"] == "16.70"
    assert failed.status_code == 500
    assert added == 2  # one committed checkout row per request


def test_the_bundle_holds_the_warm_connection_and_no_password(capture, keys) -> None:  # type: ignore[no-untyped-def]
    bundle, _, _, _, _ = capture
    payload = open_bundle(bundle.read_bytes(), keys.replay_key).payload
    assert PASSWORD not in json.dumps(payload)
    db = [e for e in payload["events"] if e["kind"] == "db"]
    assert db[0]["data"]["op"] == "connect" and db[0]["data"]["opened"] == "before"  # by the first request
    assert [e["data"]["op"] for e in db[1:]] == ["execute", "commit", "execute", "commit"]
    assert payload["outcome"]["error"]["type"] == "builtins:TypeError"


@pytest.fixture(scope="module")
def replays(capture, keys):  # type: ignore[no-untyped-def]
    bundle, _, _, _, _ = capture
    return replay_offline(bundle, f"{APP}:app", keys, env_without=("DATABASE_URL",), times=3)


def test_replay_offline_a_day_later_reproduces_three_times(replays) -> None:  # type: ignore[no-untyped-def]
    replays.assert_reproduced(times=3, max_seconds=2.0)
    replays.assert_every_recorded_call_made()
    for run in replays.runs:
        assert run["status"] == 500 and run["new"]["error_type"] == "builtins:TypeError"


def test_the_fixed_app_passes_the_guard_and_no_replay_wrote_anything(capture, keys, database) -> None:  # type: ignore[no-untyped-def]
    bundle, _, _, _, written = capture
    restart(database)  # up and reachable: the hardest case for "nothing is written"
    replays = replay_offline(bundle, f"{APP}:fixed_app", keys, env_without=("DATABASE_URL",), expect="fixed", times=1)
    run = replays.assert_fixed()
    assert run["status"] == 200 and json.loads(run["body"])["total"] == "12.50"
    assert writes(database) == written  # the four replays wrote nothing
