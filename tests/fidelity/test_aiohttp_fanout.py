"""aiohttp fan-out: a FastAPI route under uvicorn gathers three aiohttp calls to a storefront upstream (its own
process); the recommender answers 500 after the other two, `raise_for_status` raises out of `gather`, 500.

Captured by the app process, the upstream stopped, replayed offline in a fresh process a day later without
STOREFRONT_URL, three times: the same ClientResponseError and fingerprint, and the same events served in the
same order each time (concurrency replayed, not just matched). The fixed app then replays as `fixed`.

On `/feed` the 500 comes first, while the other two calls are in flight: the route's exit closes their
connections, aiohttp retries them, and the execution ends with the retries still pending. That failure
reproduces 3 times too, the retries staying pending as they were, never an internal error.
"""

from __future__ import annotations

import httpx
import pytest
from client_harness import replay_offline_with_events
from harness import app_server, assert_stopped, hits, one_bundle, upstream

pytestmark = pytest.mark.slow

SETTINGS = ("STOREFRONT_URL",)


@pytest.fixture(scope="module")
def captures(tmp_path_factory, keys):
    """Both routes' failures, each bundle moved to a folder of its own once written."""
    folder = tmp_path_factory.mktemp("aiohttp-fanout")
    found = {}
    with upstream("fake_storefront:app") as storefront:
        with app_server("fanout_aiohttp_app:app", keys, folder / "bundles", {"STOREFRONT_URL": storefront}) as url:
            for route in ("home", "feed"):
                response = httpx.get(f"{url}/users/u-7/{route}", timeout=30)
                (folder / route).mkdir()
                bundle = one_bundle(folder / "bundles").rename(folder / route / "failure.fluxrun")
                found[route] = (bundle, response, hits(storefront))
    assert_stopped(storefront)
    return found


@pytest.fixture(scope="module")
def capture(captures):
    return captures["home"]


def test_the_recommender_500_breaks_the_page(capture):
    _, response, upstream_hits = capture
    assert response.status_code == 500
    assert upstream_hits == 3


@pytest.fixture(scope="module")
def replays(capture, keys):
    bundle, _, _ = capture
    return replay_offline_with_events(bundle, "fanout_aiohttp_app:app", keys, env_without=SETTINGS, times=3)


def test_replay_a_day_later_reproduces_with_identical_events(replays):
    replays.assert_reproduced(times=3, max_seconds=1.0)
    for run in replays.runs:
        assert run["new"]["error_type"] == "aiohttp.client_exceptions:ClientResponseError"
        assert run["status"] == 500 and run["served"]["http"] == 3
    first = replays.runs[0]["events"]
    assert [(kind, call.rsplit("/", 2)[-2], task) for kind, call, task, _ in first if kind == "http"] == [
        ("http", "profile", "0.1"),
        ("http", "orders", "0.2"),
        ("http", "recommendations", "0.3"),
    ]  # one call per gathered task, each matched within its own task
    assert all(run["events"] == first for run in replays.runs), replays.describe()


def test_the_guard_holds_strictly(replays):
    replays.assert_every_recorded_call_made()


def test_the_fixed_app_renders_without_recommendations(capture, keys):
    bundle, _, _ = capture
    fixed = replay_offline_with_events(bundle, "fanout_aiohttp_app:fixed_app", keys, env_without=SETTINGS,
                                       expect="fixed", times=1)  # fmt: skip
    run = fixed.assert_fixed()
    assert run["status"] == 200
    assert httpx.Response(200, content=run["body"]).json() == {"name": "Ada", "orders": 2, "recommended": []}


@pytest.fixture(scope="module")
def feed_replays(captures, keys):
    bundle, _, _ = captures["feed"]
    return replay_offline_with_events(bundle, "fanout_aiohttp_app:app", keys, env_without=SETTINGS, times=20)


def test_the_feed_fails_first_with_two_calls_in_flight(captures):
    _, response, upstream_hits = captures["feed"]
    assert response.status_code == 500
    assert upstream_hits >= 6  # /home's 3 and /feed's 3 (aiohttp's retries of the closed calls may arrive too)


def test_the_feed_reproduces_with_the_calls_in_flight_left_pending(feed_replays):
    feed_replays.assert_reproduced(times=20, max_seconds=1.0)
    first = feed_replays.runs[0]["events"]
    assert all(run["events"] == first for run in feed_replays.runs), feed_replays.describe()  # 20 of 20 identical
    for run in feed_replays.runs:
        assert run["new"]["error_type"] == "aiohttp.client_exceptions:ClientResponseError"
    first = feed_replays.runs[0]["events"]
    assert all(run["events"] == first for run in feed_replays.runs), feed_replays.describe()


def test_the_feed_guard_holds_strictly(feed_replays):
    feed_replays.assert_every_recorded_call_made()
