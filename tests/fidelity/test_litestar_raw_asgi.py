"""Litestar in the raw ASGI form (`app = fluxrun.FluxRunMiddleware(app)`) under uvicorn: the price route reads
`price` from the v1 price API (its own process), whose schema moved on; KeyError, which Litestar answers as
its own 500, so the middleware sees only a status unless FluxRun hears the exception Litestar handled.

Captured, both processes stopped, replayed offline a day later without PRICING_URL and PRICING_API_KEY and
with no `app=`: replay finds the recorded entry point (the middleware the module holds), and reproduces the
same KeyError and fingerprint three times, the route template recorded. The fixed app then replays as `fixed`.
"""

from __future__ import annotations

import httpx
import pytest
from harness import app_server, assert_stopped, hits, one_bundle, replay_offline, upstream

from fluxrun.bundle import open_bundle, read_bundle

pytestmark = pytest.mark.slow

SETTINGS = ("PRICING_URL", "PRICING_API_KEY")
API_KEY = "pk_live_fidelity_litestar"
ENTRY = "litestar_catalog_app:app"
ROUTE = "/products/{sku}/price"  # Litestar's path template (the type dropped)


@pytest.fixture(scope="module")
def capture(tmp_path_factory, keys):
    capture_dir = tmp_path_factory.mktemp("litestar-raw-asgi")
    with upstream("fake_services:app") as pricing:
        env = {"PRICING_URL": pricing, "PRICING_API_KEY": API_KEY}
        with app_server(ENTRY, keys, capture_dir, env) as app:
            response = httpx.get(f"{app}/products/sku-7/price", timeout=30)
            bundle = one_bundle(capture_dir)
        assert hits(pricing) == 1
    assert_stopped(pricing)
    return bundle, response


def test_litestar_answers_500_and_the_bundle_holds_the_key_error_and_route_template(capture, keys):
    bundle, response = capture
    assert response.status_code == 500
    data = bundle.read_bytes()
    summary = read_bundle(data).summary
    assert (summary["entry"], summary["method"], summary["status"]) == (ENTRY, "GET", 500)
    assert summary["route"] == ROUTE, summary
    assert summary["outcome"] == "error" and summary["error"]["type"] == "builtins:KeyError"
    payload = open_bundle(data, keys.replay_key).payload
    assert payload["outcome"]["error"]["message"] == "'price'"
    assert API_KEY not in str(summary)  # the plaintext summary names the settings read, not their values


@pytest.fixture(scope="module")
def replays(capture, keys):
    bundle, _ = capture
    return replay_offline(bundle, ENTRY, keys, env_without=SETTINGS, times=3, name_app=False)


def test_replay_with_no_app_finds_the_entry_point_and_reproduces_the_key_error(replays):
    # nothing imported the app beforehand, so each isolated replay imports it (framework included) in its own
    # child: that import, not a real wait, is what the looser bound allows for
    replays.assert_reproduced(times=3, max_seconds=5.0)
    for run in replays.runs:
        assert run["entry"] == ENTRY
        assert run["new"]["error_type"] == "builtins:KeyError" and run["new"]["status"] == 500
        assert run["status"] == 500  # Litestar's own answer, as in production
        assert run["served"]["http"] == 1


def test_the_guard_holds_strictly(replays):
    replays.assert_every_recorded_call_made()


def test_the_fixed_app_passes(capture, keys):
    bundle, _ = capture
    fixed = replay_offline(
        bundle, "litestar_catalog_app:fixed_app", keys, env_without=SETTINGS, expect="fixed", times=1
    )
    run = fixed.assert_fixed()
    assert run["status"] == 200
    assert httpx.Response(200, content=run["body"]).json() == {"sku": "sku-7", "price": "12.50", "currency": "EUR"}
