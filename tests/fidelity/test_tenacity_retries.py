"""tenacity: `@retry(stop=stop_after_attempt(3), wait=wait_exponential(...))` around an httpx call that fails
three times (503), so the capture really waited 0.5 + 1 s. Replayed offline a day later without the feed's URL,
the three attempts are served from the recording and tenacity's sleeps return at once: milliseconds, and the
same HTTPStatusError. The fixed app quotes in the base currency."""

from __future__ import annotations

import time

import httpx
import pytest
from harness import app_server, assert_stopped, hits, one_bundle, replay_offline, upstream

pytestmark = pytest.mark.slow

SETTINGS = ("RATES_URL",)


@pytest.fixture(scope="module")
def capture(tmp_path_factory, keys):
    capture_dir = tmp_path_factory.mktemp("tenacity")
    with upstream("fake_services:app") as api:
        with app_server("tenacity_app:app", keys, capture_dir, {"RATES_URL": api}) as url:
            started = time.monotonic()
            response = httpx.get(f"{url}/quotes/100", params={"currency": "USD"}, timeout=30)
            took = time.monotonic() - started
            bundle = one_bundle(capture_dir)
            upstream_hits = hits(api)
    assert_stopped(api)
    return bundle, response, upstream_hits, took


def test_three_attempts_with_real_backoff_then_the_error(capture):
    _, response, upstream_hits, took = capture
    assert response.status_code == 500
    assert upstream_hits == 3
    assert took >= 1.5  # wait_exponential(multiplier=0.5): 0.5 s, then 1 s


@pytest.fixture(scope="module")
def replays(capture, keys):
    bundle, *_ = capture
    return replay_offline(bundle, "tenacity_app:app", keys, env_without=SETTINGS, times=3)


def test_replay_takes_milliseconds_and_reproduces(replays):
    replays.assert_reproduced(times=3, max_seconds=0.75)  # half the backoff the capture waited
    for run in replays.runs:
        assert run["new"]["error_type"] == "httpx:HTTPStatusError"
        assert run["served"]["http"] == 3


def test_the_guard_holds_strictly(replays):
    replays.assert_every_recorded_call_made()


def test_the_fixed_app_quotes_in_the_base_currency(capture, keys):
    bundle, *_ = capture
    replays = replay_offline(bundle, "tenacity_app:fixed_app", keys, env_without=SETTINGS, expect="fixed", times=1)
    run = replays.assert_fixed()
    assert run["body"] == '{"amount":100.0,"currency":"EUR","converted":false}'
