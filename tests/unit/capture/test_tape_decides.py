"""The tape decides what a replay sees, wherever the read happens: in the app or in an installed SDK.

An SDK that reads its API key from the environment inside the call, checks a token's expiry against the
clock and retries with sleeps and jitter is captured failing (upstream 503 three times). The replay runs in
a CI without the secret and a day later: the SDK's own env and clock reads are served from the recording, so
the replay reproduces the same error, and its backoff sleeps return at once, so it takes milliseconds.
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
import time_machine
from typer.testing import CliRunner

import fluxrun
from fluxrun import _internal
from fluxrun.agent.mask import mask_payload
from fluxrun.cli import app as cli_app
from fluxrun.scrub import default_scrubber

SECRET = "sk-paysdk-live-9f8e7d6c5b4a39281706"
BACKOFF = 0.5  # capture really sleeps 0.5 + 1 s (plus jitter) between the three attempts
UPSTREAM = {"calls": 0}

SDK_SOURCE = """
import asyncio, os, random, time
from datetime import datetime, timezone

import httpx


class MissingCredentials(Exception):
    pass


class TokenExpired(Exception):
    pass


class UpstreamError(Exception):
    pass


def _credentials(token_exp):
    key = os.environ.get("OPENAI_API_KEY")  # read inside the call, as real SDKs do
    if not key:
        raise MissingCredentials("OPENAI_API_KEY is not set")
    if datetime.now(timezone.utc).timestamp() >= token_exp:  # PyJWT's exp check
        raise TokenExpired("token expired")
    if time.time() >= token_exp:
        raise TokenExpired("token expired (time.time)")
    return key


def _delay(attempt, backoff):
    return backoff * 2 ** attempt + random.random() * backoff / 10  # retry jitter


def charge(transport, amount, token_exp, backoff, attempts=3):
    key = _credentials(token_exp)
    with httpx.Client(transport=transport) as client:
        for attempt in range(attempts):
            response = client.post("https://pay.test/v1/charges", json={"amount": amount},
                                   headers={"authorization": f"Bearer {key}"})
            if response.status_code < 500:
                return response.json()
            if attempt + 1 < attempts:
                time.sleep(_delay(attempt, backoff))
    raise UpstreamError(f"{response.status_code} after {attempts} attempts (key ...{key[-4:]})")


async def acharge(transport, amount, token_exp, backoff, attempts=3):
    key = _credentials(token_exp)
    async with httpx.AsyncClient(transport=transport) as client:
        for attempt in range(attempts):
            response = await client.post("https://pay.test/v1/charges", json={"amount": amount})
            if response.status_code < 500:
                return response.json()
            if attempt + 1 < attempts:
                await asyncio.sleep(_delay(attempt, backoff))
    raise UpstreamError(f"{response.status_code} after {attempts} attempts (key ...{key[-4:]})")
"""


def upstream(request: httpx.Request) -> httpx.Response:
    UPSTREAM["calls"] += 1
    return httpx.Response(503, json={"error": "overloaded"})


def pay(amount: int, token_exp: float) -> dict:
    import paysdk  # type: ignore[import-not-found]

    return paysdk.charge(httpx.MockTransport(upstream), amount, token_exp, BACKOFF)


async def apay(amount: int, token_exp: float) -> dict:
    import paysdk  # type: ignore[import-not-found]

    return await paysdk.acharge(httpx.MockTransport(upstream), amount, token_exp, BACKOFF)


@pytest.fixture
def sdk_package(tmp_path, monkeypatch):
    """A package `paysdk` installed in a site-packages folder (as tests/unit/capture/test_library_calls.py
    fakes one on every Python layout)."""
    site = tmp_path / "site-packages"
    (site / "paysdk").mkdir(parents=True)
    (site / "paysdk" / "__init__.py").write_text(textwrap.dedent(SDK_SOURCE))
    root = str(Path(os.path.realpath(site))) + os.sep
    monkeypatch.setattr(_internal, "LIBRARY_ROOTS", (*_internal.LIBRARY_ROOTS, root))
    monkeypatch.setattr(_internal, "SITE_ROOTS", (*_internal.SITE_ROOTS, root))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    importlib.invalidate_caches()
    importlib.import_module("paysdk")  # imported at start-up, as an app imports its SDK
    UPSTREAM["calls"] = 0
    yield
    sys.modules.pop("paysdk", None)


def capture_failure(captured, function, *args):
    started = time.monotonic()
    with pytest.raises(Exception) as raised:
        result = fluxrun.capture(function)(*args)
        if hasattr(result, "__await__"):
            import asyncio

            asyncio.run(result)
    took = time.monotonic() - started
    assert type(raised.value).__name__ == "UpstreamError", raised.value
    assert took >= 3 * BACKOFF  # the capture really slept (0.5 + 1 s)
    (path,) = captured.files()
    fluxrun.shutdown()
    return path, raised.value


def replay_in_a_bare_ci_a_day_later(path, keys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")  # the CI has no such secret
    UPSTREAM["calls"] = 0
    with time_machine.travel(time.time() + 86_400, tick=True):
        started = time.monotonic()
        result = fluxrun.replay.run(path, keys.replay)
        took = time.monotonic() - started
    return result, took


@pytest.mark.usefixtures("sdk_package")
def test_an_sdk_s_own_env_clock_and_sleeps_come_from_the_tape(captured, keys, monkeypatch):
    path, error = capture_failure(captured, pay, 1200, time.time() + 3600)
    assert UPSTREAM["calls"] == 3

    result, took = replay_in_a_bare_ci_a_day_later(path, keys, monkeypatch)

    assert result.outcome == "reproduced", result.new
    assert result.new.error_type.endswith("UpstreamError") and result.new.message == str(error)
    assert UPSTREAM["calls"] == 0
    # a replay that waited the backoff would take at least the 1.5 s the capture slept
    assert took < 3 * BACKOFF, f"replay took {took:.3f} s: the SDK's backoff sleeps were waited"
    assert result.served["env"] >= 1 and result.served["time"] >= 2


@pytest.mark.usefixtures("sdk_package")
def test_an_async_sdk_s_backoff_returns_at_once_and_still_yields(captured, keys, monkeypatch):
    path, error = capture_failure(captured, apay, 1200, time.time() + 3600)

    result, took = replay_in_a_bare_ci_a_day_later(path, keys, monkeypatch)

    assert result.outcome == "reproduced", result.new
    assert result.new.message == str(error)
    assert took < 3 * BACKOFF  # waiting the backoff would take at least the 1.5 s the capture slept


@pytest.mark.usefixtures("sdk_package")
def test_env_is_a_snapshot_one_event_per_key_whoever_reads_it(captured, monkeypatch):
    monkeypatch.setenv("SHOP_MODE", "live")

    @fluxrun.capture
    def job():
        import paysdk  # type: ignore[import-not-found]

        for _ in range(3):
            os.environ.get("SHOP_MODE")
            "SHOP_MODE" in os.environ  # noqa: B015
        paysdk._credentials(time.time() + 60)  # the SDK reads OPENAI_API_KEY
        paysdk._credentials(time.time() + 60)  # ... and again: no second event
        os.environ["SHOP_MODE"]
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        job()
    events = captured.events("env")
    assert [e["call"] for e in events] == ["env SHOP_MODE", "env OPENAI_API_KEY"]
    assert events[1]["site"].startswith("paysdk:")


def test_a_key_never_read_at_capture_is_a_clear_divergence(captured, keys):
    with pytest.raises(RuntimeError):
        fluxrun.capture(read_flag)(False)
    (path,) = captured.files()
    fluxrun.shutdown()
    with pytest.raises(fluxrun.ReplayDivergence) as raised:
        fluxrun.replay.run(path, keys.replay, app=lambda new: read_flag(True))
    message = str(raised.value)
    assert "env SHOP_NEW_FLAG has no recorded answer" in message
    assert "was not read when this execution was captured" in message
    assert "Answers().env(" in message


def read_flag(new: bool) -> None:
    if new:
        os.environ.get("SHOP_NEW_FLAG")
    raise RuntimeError(os.environ.get("SHOP_OLD_FLAG", "unset"))


@pytest.mark.usefixtures("sdk_package")
def test_the_sdk_s_secret_is_masked_in_inspect_and_in_the_agent_s_answer(captured, keys):
    path, _ = capture_failure(captured, pay, 1200, time.time() + 3600)

    shown = CliRunner().invoke(cli_app, ["bundle", "inspect", str(path), "--key", str(keys.replay)])
    assert shown.exit_code == 0, shown.output
    assert "OPENAI_API_KEY" in shown.output and SECRET not in shown.output
    assert SECRET[-6:] not in shown.output

    from fluxrun.bundle import open_bundle

    opened = open_bundle(path.read_bytes(), keys.replay_key)
    assert SECRET not in path.read_bytes().decode("latin-1")  # encrypted in the payload
    assert SECRET not in str(opened.summary)  # the plaintext summary never holds env values
    (event,) = [e for e in opened.payload["events"] if e["call"] == "env OPENAI_API_KEY"]
    assert event["data"]["value"] == SECRET  # the owner's key opens it for replay
    masked = mask_payload(opened.payload, default_scrubber())  # what the agent's unlock answers
    assert SECRET not in str(masked)
