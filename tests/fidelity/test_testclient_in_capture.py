"""Starlette's TestClient inside a captured function: a nightly job process calls a Starlette app through
TestClient (an anyio blocking portal in its own thread) and that app's httpx fetch brings a region without its
`sum`: KeyError. Captured with the portal working as without FluxRun, replayed offline a day later without
the totals URL, reproduced; the fixed job passes."""

from __future__ import annotations

import pytest
from harness import assert_stopped, hits, one_bundle, replay_offline, run_job, upstream

from fluxrun.bundle import open_bundle

pytestmark = pytest.mark.slow

SETTINGS = ("TOTALS_URL",)


@pytest.fixture(scope="module")
def capture(tmp_path_factory, keys):
    capture_dir = tmp_path_factory.mktemp("testclient")
    with upstream("fake_services:app") as api:
        output = run_job("report_job:main", keys, capture_dir, {"TOTALS_URL": api}, "2026-12-03")
        bundle = one_bundle(capture_dir)
        assert hits(api) == 1
    assert_stopped(api)
    return bundle, output


def test_the_portal_ran_and_the_job_failed_with_key_error(capture, keys):
    bundle, output = capture
    assert "KeyError: 'sum'" in output
    assert "Already running asyncio in this thread" not in output
    payload = open_bundle(bundle.read_bytes(), keys.replay_key).payload
    assert payload["outcome"]["error"]["type"] == "builtins:KeyError"


@pytest.fixture(scope="module")
def replays(capture, keys):
    bundle, _ = capture
    return replay_offline(bundle, "report_job:nightly_report", keys, env_without=SETTINGS, times=3)


def test_replay_reproduces_through_the_portal(replays):
    replays.assert_reproduced(times=3)
    assert all(run["new"]["error_type"] == "builtins:KeyError" for run in replays.runs)


def test_the_guard_holds_strictly(replays):
    replays.assert_every_recorded_call_made()


def test_the_fixed_job_passes(capture, keys):
    bundle, _ = capture
    replays = replay_offline(
        bundle, "report_job:nightly_report_fixed", keys, env_without=SETTINGS, expect="fixed", times=1
    )
    replays.assert_fixed()
