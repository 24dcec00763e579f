"""Flask + requests: a checkout under gunicorn charges a card; the payment upstream (its own process) answers the
decline in its new error schema, the app reads the old one, KeyError, 500.

Captured by the gunicorn worker (folder sink), both processes stopped, replayed offline in a fresh process a
day later without PAYMENT_URL and PAYMENT_API_KEY, three times: the same KeyError, the same fingerprint, the
same charge request (its idempotency key and timestamp served from the tape). The fixed app then replays as
`fixed` with the upstream restarted on the recorded port, and the upstream's ledger (a file, so it survives the
restart) shows that no replay charged the card again.
"""

from __future__ import annotations

import httpx
import pytest
from client_harness import UPSTREAMS, capture_env, gunicorn_app, uvicorn_on
from harness import assert_stopped, one_bundle, replay_offline
from servers import free_port

pytestmark = pytest.mark.slow

API_KEY = "sk_live_fidelity_payments_42"
SETTINGS = ("PAYMENT_URL", "PAYMENT_API_KEY", "PAYMENT_LEDGER")
ORDER = {"id": "o-1001", "amount": 4200, "card": {"number": "4000000000000002", "exp": "12/29", "cvc": "123"}}


def charges(url: str) -> int:
    return int(httpx.get(f"{url}/_charges", timeout=5).json()["charges"])


@pytest.fixture(scope="module")
def capture(tmp_path_factory, keys):
    folder = tmp_path_factory.mktemp("flask-payments")
    upstream_env = {"PAYMENT_LEDGER": str(folder / "ledger.jsonl")}
    upstream_port = free_port()
    with uvicorn_on("fake_payments:app", upstream_port, UPSTREAMS, upstream_env) as payments:
        env = capture_env(keys, folder / "bundles", {"PAYMENT_URL": payments.url, "PAYMENT_API_KEY": API_KEY})
        with gunicorn_app("payment_flask_app:app", free_port(), env) as app:
            response = httpx.post(f"{app.url}/checkout", json=ORDER, timeout=30)
            bundle = one_bundle(folder / "bundles")
        charged = charges(payments.url)
    assert_stopped(payments.url)
    return {"bundle": bundle, "response": response, "charged": charged, "port": upstream_port,
            "upstream_env": upstream_env}  # fmt: skip


def test_the_decline_in_the_new_schema_is_a_500(capture):
    assert capture["response"].status_code == 500
    assert capture["charged"] == 1


@pytest.fixture(scope="module")
def replays(capture, keys):
    return replay_offline(capture["bundle"], "payment_flask_app:app", keys, env_without=SETTINGS, times=3)


def test_replay_without_the_payment_settings_a_day_later_reproduces_the_key_error(replays):
    replays.assert_reproduced(times=3, max_seconds=1.0)
    for run in replays.runs:
        assert run["new"]["error_type"] == "builtins:KeyError" and run["status"] == 500
        assert run["served"]["http"] == 1


def test_the_guard_holds_strictly(replays):
    replays.assert_every_recorded_call_made()


def test_the_fixed_app_answers_402_and_nothing_is_charged_again(capture, replays, keys):
    with uvicorn_on("fake_payments:app", capture["port"], UPSTREAMS, capture["upstream_env"]) as payments:
        fixed = replay_offline(capture["bundle"], "payment_flask_app:fixed_app", keys, env_without=SETTINGS,
                               expect="fixed", times=1)  # fmt: skip
        run = fixed.assert_fixed()
        assert run["status"] == 402
        assert httpx.Response(402, content=run["body"]).json() == {"order": "o-1001", "declined": "insufficient_funds"}
        assert charges(payments.url) == capture["charged"] == 1  # 3 reproducing replays and a fixed one: no charge
