"""Shipping with real processes on loopback: an app under uvicorn with FLUXRUN_DSN, and a real `fluxrun server`
that is stopped for a while and restarted on the same data dir and port. Every failure arrives exactly once,
and the app never slows down while the server is away."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from server_process import fluxrun_server, wait_until
from servers import uvicorn_process

pytestmark = pytest.mark.slow


def timed(client: httpx.Client, path: str, count: int, expect: int, prefix: str = "") -> list[float]:
    """Seconds per request for `count` requests, each checked for its status."""
    samples = []
    # uvicorn closes the connection after an app's exception; ask for that up front rather than reuse it
    headers = {"x-request-id": "", "connection": "close"} if expect >= 500 else {}
    for n in range(count):
        if prefix:
            headers["x-request-id"] = f"{prefix}{n}"
        started = time.perf_counter()
        response = client.get(path.format(n=n), headers=headers)
        samples.append(time.perf_counter() - started)
        assert response.status_code == expect, response.text
    return samples


def stats(client: httpx.Client) -> dict[str, int]:
    return client.get("/fluxrun/stats").json()  # type: ignore[no-any-return]


def test_failures_reach_the_server_and_survive_an_outage_exactly_once(tmp_path: Path, keys) -> None:
    with fluxrun_server(tmp_path / "server", keys.capture) as server:
        env = {
            "FLUXRUN_DSN": server.dsn,
            "FLUXRUN_CAPTURE_KEY": str(keys.capture),
            "FLUXRUN_DIR": str(tmp_path / "app"),
        }
        with uvicorn_process("ship_app:app", env) as app, httpx.Client(base_url=app, timeout=10) as client:
            # 1. the server is up: failures arrive and can be queried with an API key
            timed(client, "/fail/{n}", 3, 500, prefix="up-")
            assert wait_until(lambda: {r["request_id"] for r in server.runs()} == {"up-0", "up-1", "up-2"}, 30)
            run = server.runs()[0]
            assert run["error_type"] == "builtins:RuntimeError" and run["route"] == "/fail/{n}"
            timed(client, "/ok", 20, 200)  # warm-up
            baseline = timed(client, "/ok", 60, 200)

            # 2. the server goes away: the app keeps answering as fast, and the failures wait in the spool
            server.stop()
            during_failures = timed(client, "/fail/{n}", 10, 500, prefix="down-")
            during = timed(client, "/ok", 60, 200)
            assert wait_until(lambda: stats(client)["spool_files"] == 10, 30), stats(client)
            assert len(list((tmp_path / "app" / "spool").glob("*.fluxrun"))) == 10
            assert statistics.median(during) < statistics.median(baseline) * 2 + 0.005, (baseline, during)
            assert max(during_failures) < 1.0  # a failure is answered without waiting on the network
            time.sleep(1.0)  # stay down a little longer: the sender backs off meanwhile

            # 3. back on the same data dir and port: the spool is delivered, each failure exactly once
            server.start()
            expected = {f"up-{n}" for n in range(3)} | {f"down-{n}" for n in range(10)}
            assert wait_until(lambda: {r["request_id"] for r in server.runs()} == expected, 90), stats(client)
            assert wait_until(lambda: stats(client)["spool_files"] == 0, 10)  # removed once acknowledged
            final = stats(client)

    assert final["sent"] == 13 and final["delivered_from_spool"] == 10, final
    assert final["dropped"] == 0 and final["queued"] == 13 and final["sealed"] == 13, final


def test_each_failure_is_stored_once_by_request_and_bundle_id(tmp_path: Path, keys) -> None:
    """A short outage in the middle of a stream of failures: no failure lost, none stored twice."""
    with fluxrun_server(tmp_path / "server", keys.capture) as server:
        env = {
            "FLUXRUN_DSN": server.dsn,
            "FLUXRUN_CAPTURE_KEY": str(keys.capture),
            "FLUXRUN_DIR": str(tmp_path / "app"),
        }
        with uvicorn_process("ship_app:app", env) as app, httpx.Client(base_url=app, timeout=10) as client:
            timed(client, "/fail/{n}", 5, 500, prefix="a-")
            server.stop()
            timed(client, "/fail/{n}", 5, 500, prefix="b-")
            server.start()
            timed(client, "/fail/{n}", 5, 500, prefix="c-")
            expected = {f"{p}-{n}" for p in "abc" for n in range(5)}
            assert wait_until(lambda: {r["request_id"] for r in server.runs()} >= expected, 90), stats(client)
            time.sleep(1.0)  # anything sent twice would be in by now
            runs = server.runs()
            assert wait_until(lambda: stats(client)["spool_files"] == 0, 10)
            final = stats(client)
    assert Counter(r["request_id"] for r in runs) == Counter(expected)  # exactly once each
    assert len({r["bundle_id"] for r in runs}) == len(runs) == 15
    assert final["sent"] == 15 and final["dropped"] == 0, final
