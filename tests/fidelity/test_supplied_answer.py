"""A fix that needs a supplied answer: the price API's v1 schema moved on (KeyError 'price'); the fix falls back
to v2, a fetch the recording never saw. The guard supplies that answer with `fluxrun.replay.Answers().http(...)`
and passes, listing it; without it the fixed code diverges (nothing falls through to the live world)."""

from __future__ import annotations

import httpx
import pytest
from harness import app_server, assert_stopped, hits, one_bundle, replay_offline, upstream

pytestmark = pytest.mark.slow

SETTINGS = ("PRICING_URL",)


@pytest.fixture(scope="module")
def capture(tmp_path_factory, keys):
    capture_dir = tmp_path_factory.mktemp("supplied")
    with upstream("fake_services:app") as api:
        with app_server("pricing_app:app", keys, capture_dir, {"PRICING_URL": api}) as url:
            response = httpx.get(f"{url}/items/sku-7/price", timeout=30)
            bundle = one_bundle(capture_dir)
            assert hits(api) == 1
    assert_stopped(api)
    return bundle, response, api


@pytest.fixture(scope="module")
def replays(capture, keys):
    bundle, _, _ = capture
    return replay_offline(bundle, "pricing_app:app", keys, env_without=SETTINGS, times=3)


def test_the_schema_change_reproduces_as_key_error(capture, replays):
    assert capture[1].status_code == 500
    replays.assert_reproduced(times=3)
    assert all(run["new"]["error_type"] == "builtins:KeyError" for run in replays.runs)


def test_the_guard_holds_strictly(replays):
    replays.assert_every_recorded_call_made()


def test_the_fix_passes_with_the_v2_answer_supplied_and_lists_it(capture, keys):
    bundle, _, api = capture
    v2 = f"{api}/v2/prices/sku-7"
    answers = [["http", ["GET", v2], {"json": {"sku": "sku-7", "price": {"amount": "12.50", "currency": "EUR"}}}]]
    replays = replay_offline(
        bundle, "pricing_app:fixed_app", keys, env_without=SETTINGS, expect="fixed", times=1, answers=answers
    )
    run = replays.assert_fixed()
    assert run["body"] == '{"sku":"sku-7","price":"12.50","currency":"EUR"}'
    assert run["supplied"] == [f"http GET {v2} (1 call)"]
    assert f"answered by the test, not the recording: http GET {v2}" in run["summary"]


def test_without_the_supplied_answer_the_fix_diverges(capture, keys):
    bundle, _, _ = capture
    replays = replay_offline(bundle, "pricing_app:fixed_app", keys, env_without=SETTINGS, expect="fixed", times=1)
    (run,) = replays.runs
    assert run.get("raised", "").startswith("fluxrun.errors.ReplayDivergence"), replays.describe()
    assert "/v2/prices/sku-7" in run["raised"]
