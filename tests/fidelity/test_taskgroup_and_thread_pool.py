"""TaskGroup and ThreadPoolExecutor fan-outs: FastAPI under uvicorn, httpx to a storefront upstream (its own
process). Each route's failure is captured by the app process, the upstream stopped, and replayed offline in a
fresh process a day later without STOREFRONT_URL: the same error and fingerprint, and the same events served
in the same order on every run (20 runs for each concurrency scenario), then the fixed app replays as `fixed`.

The thread pool's workers make their first call in the reverse order of their creation (CPU work first): calls
are matched per worker by the lineage the worker got when it was created, not by when it first made IO.
"""

from __future__ import annotations

import httpx
import pytest
from client_harness import replay_offline_with_events
from harness import app_server, assert_stopped, hits, one_bundle, upstream

pytestmark = pytest.mark.slow

SETTINGS = ("STOREFRONT_URL",)
ROUTES = ("summary", "summary-fast-fail", "report")


@pytest.fixture(scope="module")
def captures(tmp_path_factory, keys):
    folder = tmp_path_factory.mktemp("concurrency")
    found = {}
    with upstream("fake_storefront:app") as storefront:
        with app_server("concurrency_app:app", keys, folder / "bundles", {"STOREFRONT_URL": storefront}) as url:
            for route in ROUTES:
                response = httpx.get(f"{url}/users/u-7/{route}", timeout=30)
                (folder / route).mkdir()
                found[route] = (one_bundle(folder / "bundles").rename(folder / route / "failure.fluxrun"), response)
        total_hits = hits(storefront)
    assert_stopped(storefront)
    return found, total_hits, storefront


@pytest.fixture(scope="module")
def replays(captures, keys):
    found, _, _ = captures
    return {
        route: replay_offline_with_events(bundle, "concurrency_app:app", keys, env_without=SETTINGS, times=20)
        for route, (bundle, _) in found.items()
    }


def test_each_route_fails_with_a_500_and_every_call_reached_the_upstream(captures):
    found, total_hits, _ = captures
    assert [found[route][1].status_code for route in ROUTES] == [500, 500, 500]
    assert total_hits >= 9


@pytest.mark.parametrize("route", ROUTES)
def test_twenty_replays_a_day_later_reproduce_with_identical_events(replays, route):
    runs = replays[route]
    runs.assert_reproduced(times=20, max_seconds=1.0)
    first = runs.runs[0]["events"]
    assert all(run["events"] == first for run in runs.runs), runs.describe()
    assert runs.runs[0]["new"]["error_type"].endswith(("ExceptionGroup", "HTTPStatusError"))


def test_the_task_group_calls_are_matched_each_in_its_own_task(replays):
    events = replays["summary"].runs[0]["events"]
    http = [(call.split("?")[0].rsplit("/", 2)[-2], task) for kind, call, task, _ in events if kind == "http"]
    assert sorted(http) == [("orders", "0.2"), ("profile", "0.1"), ("recommendations", "0.3")]


def test_calls_in_flight_when_the_group_failed_stay_pending_and_the_guard_holds(replays):
    runs = replays["summary-fast-fail"]
    assert all(run["new"]["error_type"].endswith("ExceptionGroup") for run in runs.runs), runs.describe()
    for route in ROUTES:
        replays[route].assert_every_recorded_call_made()


def test_thread_pool_workers_keep_the_lineage_they_were_created_with(replays):
    events = replays["report"].runs[0]["events"]
    http = {call.split("?")[0].rsplit("/", 2)[-2]: task for kind, call, task, _ in events if kind == "http"}
    assert len(set(http.values())) == 3, http  # one lineage per worker, whatever order they called in


@pytest.mark.parametrize("route", ["summary", "report"])
def test_the_fixed_app_renders_without_recommendations(captures, keys, route):
    found, _, _ = captures
    bundle, _ = found[route]
    fixed = replay_offline_with_events(bundle, "concurrency_app:fixed_app", keys, env_without=SETTINGS,
                                       expect="fixed", times=1)  # fmt: skip
    run = fixed.assert_fixed()
    assert run["status"] == 200
    assert httpx.Response(200, content=run["body"]).json() == RENDERED


RENDERED = {"name": "Ada", "orders": 2, "recommended": []}


def test_a_fix_that_waits_for_calls_left_in_flight_is_told_so_not_left_hanging(captures, keys):
    """The fast-fail capture ended with profile and orders in flight: the fix waits for their answers, which
    the recording lacks. Replay says so within a second instead of waiting forever."""
    found, _, _ = captures
    bundle, _ = found["summary-fast-fail"]
    fixed = replay_offline_with_events(bundle, "concurrency_app:fixed_app", keys, env_without=SETTINGS,
                                       expect="fixed", times=1, timeout=60)  # fmt: skip
    (run,) = fixed.runs
    assert "ReplayDivergence" in run.get("raised", ""), fixed.describe()
    assert "was still in flight when the recorded execution ended" in run["raised"]
    assert "fluxrun.replay.Answers" in run["raised"] and run["seconds"] < 5


def test_with_the_in_flight_answers_supplied_the_fix_passes(captures, keys):
    found, _, storefront = captures
    bundle, _ = found["summary-fast-fail"]
    answers = [
        ["http", ["GET", f"{storefront}/profile/u-7"], {"json": {"user": "u-7", "name": "Ada", "tier": "gold"}}],
        ["http", ["GET", f"{storefront}/orders/u-7"], {"json": {"orders": [{"id": "o-1"}, {"id": "o-2"}]}}],
    ]
    fixed = replay_offline_with_events(bundle, "concurrency_app:fixed_app", keys, env_without=SETTINGS,
                                       expect="fixed", times=1, answers=answers)  # fmt: skip
    run = fixed.assert_fixed()
    assert httpx.Response(200, content=run["body"]).json() == RENDERED
    assert len(run["supplied"]) == 2
