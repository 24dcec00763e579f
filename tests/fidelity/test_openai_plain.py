"""openai, plain: the SDK retries a 500 (backoff with jitter, reading OPENAI_API_KEY from the environment inside
the request), gives up, and the app answers 502. Replayed offline a day later without OPENAI_API_KEY or the
upstream's URL, it reproduces in milliseconds; the fixed app answers a fallback."""

from __future__ import annotations

import httpx
import pytest
from harness import app_server, assert_stopped, hits, one_bundle, replay_offline, upstream

pytestmark = pytest.mark.slow

SECRET = "sk-fidelity-openai-0123456789"
SETTINGS = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "SUMMARY_MODEL")


@pytest.fixture(scope="module")
def capture(tmp_path_factory, keys):
    capture_dir = tmp_path_factory.mktemp("openai-plain")
    with upstream("fake_openai:app") as api:
        env = {"OPENAI_API_KEY": SECRET, "OPENAI_BASE_URL": f"{api}/v1", "SUMMARY_MODEL": "gpt-down"}
        with app_server("openai_plain_app:app", keys, capture_dir, env) as url:
            response = httpx.post(f"{url}/summaries", json={"text": "FluxRun turns failures into tests."}, timeout=30)
            bundle = one_bundle(capture_dir)
            upstream_hits = hits(api)
    assert_stopped(api)
    return bundle, response, upstream_hits


def test_the_sdk_retried_and_the_app_answered_502(capture):
    _, response, upstream_hits = capture
    assert response.status_code == 502
    assert response.json() == {"error": "InternalServerError: upstream answered 500 (request req_2)"}
    assert upstream_hits == 2  # max_retries=1: the first attempt and one retry after a backoff sleep


@pytest.fixture(scope="module")
def replays(capture, keys):
    bundle, _, _ = capture
    return replay_offline(bundle, "openai_plain_app:app", keys, env_without=SETTINGS, times=3)


def test_replay_without_the_key_a_day_later_reproduces_in_milliseconds(capture, replays):
    _, response, _ = capture
    replays.assert_reproduced(times=3, max_seconds=1.0)
    for run in replays.runs:
        assert run["status"] == 502 and run["body"] == response.text  # the same two 500s, the same request id


def test_the_guard_holds_strictly(replays):
    replays.assert_every_recorded_call_made()


def test_the_fixed_app_answers_a_fallback(capture, keys):
    bundle, _, _ = capture
    replays = replay_offline(bundle, "openai_plain_app:fixed_app", keys, env_without=SETTINGS, expect="fixed", times=1)
    run = replays.assert_fixed()
    assert run["status"] == 200 and '"degraded":true' in run["body"]
