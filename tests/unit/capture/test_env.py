"""Env reads through os.environ[...], .get and os.getenv, including variables that are not set."""

from __future__ import annotations

import os

import pytest

import fluxrun


def test_env_reads_are_recorded_with_values_and_absences(captured, monkeypatch):
    monkeypatch.setenv("SHOP_CURRENCY", "EUR")
    monkeypatch.delenv("SHOP_MISSING", raising=False)

    @fluxrun.capture
    def job():
        a = os.environ["SHOP_CURRENCY"]
        b = os.environ.get("SHOP_MISSING", "fallback")
        c = os.getenv("SHOP_CURRENCY")
        raise RuntimeError(a + b + str(c))

    with pytest.raises(RuntimeError):
        job()
    events = captured.events("env")
    assert [e["call"] for e in events] == ["env SHOP_CURRENCY", "env SHOP_MISSING"]  # a snapshot: once per key
    assert events[0]["data"] == {"key": "SHOP_CURRENCY", "present": True, "value": "EUR"}
    assert events[1]["error"]["present"] is False
    assert all(e["site"].startswith(f"{__name__}:") for e in events)  # the app's line, not os.py


def test_missing_variable_still_raises_keyerror(captured):
    @fluxrun.capture
    def job():
        return os.environ["SHOP_DEFINITELY_UNSET"]

    with pytest.raises(KeyError):
        job()
    (event,) = captured.events("env")
    assert event["error"]["key"] == "SHOP_DEFINITELY_UNSET"


@pytest.mark.anyio
async def test_async_code_records_env(captured, monkeypatch):
    monkeypatch.setenv("SHOP_REGION", "eu")

    @fluxrun.capture
    async def job():
        raise RuntimeError(os.getenv("SHOP_REGION"))

    with pytest.raises(RuntimeError):
        await job()
    assert captured.events("env")[0]["data"]["value"] == "eu"


def test_membership_tests_are_reads_too_and_replay_from_the_recording(captured, keys, monkeypatch):
    monkeypatch.setenv("SHOP_FEATURE", "on")
    monkeypatch.delenv("SHOP_BETA", raising=False)
    (path,) = _capture_flags(captured)
    events = captured.events("env")
    assert [(e["call"], "error" not in e) for e in events] == [("env SHOP_FEATURE", True), ("env SHOP_BETA", False)]
    fluxrun.shutdown()
    assert "get" not in vars(type(os.environ)) and "__contains__" not in vars(type(os.environ))  # restored

    monkeypatch.delenv("SHOP_FEATURE")  # the other way round now: replay still answers from the recording
    monkeypatch.setenv("SHOP_BETA", "1")
    result = fluxrun.replay.run(path, keys.replay)
    assert result.outcome == "reproduced"
    assert result.new.message == "flags: True False"


def flags() -> None:
    raise RuntimeError(f"flags: {'SHOP_FEATURE' in os.environ} {os.environ.get('SHOP_BETA') is not None}")


def _capture_flags(captured):
    with pytest.raises(RuntimeError):
        fluxrun.capture(flags)()
    return captured.files()
