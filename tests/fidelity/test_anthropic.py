"""anthropic: the async SDK retries a 529 overloaded answer twice (backoff with jitter, ANTHROPIC_API_KEY read
from the environment inside the request) and raises OverloadedError through the app. Replayed offline a day
later without ANTHROPIC_API_KEY or the base URL, it reproduces the same error in milliseconds; the fixed app
answers that the reply is delayed."""

from __future__ import annotations

import httpx
import pytest
from harness import app_server, assert_stopped, hits, one_bundle, replay_offline, upstream

pytestmark = pytest.mark.slow

SECRET = "sk-ant-fidelity-0123456789"
SETTINGS = ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")


@pytest.fixture(scope="module")
def capture(tmp_path_factory, keys):
    capture_dir = tmp_path_factory.mktemp("anthropic")
    with upstream("fake_anthropic:app") as api:
        env = {"ANTHROPIC_API_KEY": SECRET, "ANTHROPIC_BASE_URL": api}
        with app_server("anthropic_app:app", keys, capture_dir, env) as url:
            response = httpx.post(f"{url}/replies", json={"question": "Is the service up?"}, timeout=30)
            bundle = one_bundle(capture_dir)
            upstream_hits = hits(api)
    assert_stopped(api)
    return bundle, response, upstream_hits


def test_the_sdk_retried_529_and_the_app_failed(capture):
    _, response, upstream_hits = capture
    assert response.status_code == 500
    assert upstream_hits == 3  # the SDK's default: two retries


@pytest.fixture(scope="module")
def replays(capture, keys):
    bundle, _, _ = capture
    return replay_offline(bundle, "anthropic_app:app", keys, env_without=SETTINGS, times=3)


def test_replay_without_the_key_a_day_later_reproduces_the_overloaded_error(replays):
    replays.assert_reproduced(times=3, max_seconds=1.0)
    for run in replays.runs:
        assert run["new"]["error_type"] == "anthropic:OverloadedError"
        assert run["new"]["message"] == run["original"]["message"]  # the third request id: every retry served


def test_the_guard_holds_strictly(replays):
    replays.assert_every_recorded_call_made()


def test_the_fixed_app_answers_delayed(capture, keys):
    bundle, _, _ = capture
    replays = replay_offline(bundle, "anthropic_app:fixed_app", keys, env_without=SETTINGS, expect="fixed", times=1)
    run = replays.assert_fixed()
    assert run["body"] == '{"reply":null,"status":"delayed"}'
