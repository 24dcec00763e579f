"""PyJWT expiry: the app decodes a JWT whose `exp` is an hour away (PyJWT compares it with the clock inside the
library), then its stock service answers 503. Replayed a day later, when the token is long expired by the wall
clock, the replay still sees the recorded clock: it reproduces the 503 failure, not ExpiredSignatureError."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest
from harness import app_server, assert_stopped, hits, one_bundle, replay_offline, upstream

pytestmark = pytest.mark.slow

JWT_SECRET = "fidelity-jwt-signing-secret-0123456789"
SETTINGS = ("JWT_SECRET", "STOCK_URL")


@pytest.fixture(scope="module")
def capture(tmp_path_factory, keys):
    capture_dir = tmp_path_factory.mktemp("pyjwt")
    token = jwt.encode({"sub": "user-42", "exp": int(time.time()) + 3600}, JWT_SECRET, algorithm="HS256")
    with upstream("fake_services:app") as api:
        env = {"JWT_SECRET": JWT_SECRET, "STOCK_URL": api}
        with app_server("jwt_app:app", keys, capture_dir, env) as url:
            response = httpx.get(f"{url}/stock/sku-7", headers={"authorization": f"Bearer {token}"}, timeout=30)
            bundle = one_bundle(capture_dir)
            assert hits(api) == 1
    assert_stopped(api)
    return bundle, response


def test_the_stock_service_503_failed_the_request(capture):
    _, response = capture
    assert response.status_code == 500


@pytest.fixture(scope="module")
def replays(capture, keys):
    bundle, _ = capture
    return replay_offline(bundle, "jwt_app:app", keys, env_without=SETTINGS, days_later=1, times=3)


def test_a_day_later_the_token_is_still_valid_at_replay_and_the_503_reproduces(replays):
    replays.assert_reproduced(times=3, max_seconds=1.0)
    for run in replays.runs:
        assert run["new"]["error_type"] == "httpx:HTTPStatusError", run["new"]  # not ExpiredSignatureError


def test_the_guard_holds_strictly(replays):
    replays.assert_every_recorded_call_made()


def test_the_fixed_app_answers_stock_unknown(capture, keys):
    bundle, _ = capture
    replays = replay_offline(bundle, "jwt_app:fixed_app", keys, env_without=SETTINGS, expect="fixed", times=1)
    run = replays.assert_fixed()
    assert run["body"] == '{"sku":"sku-7","available":null,"user":"user-42"}'
