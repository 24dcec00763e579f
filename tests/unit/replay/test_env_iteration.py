"""Iterating the environment is a read too: the set of variable names is recorded once per execution when the
code walks `os.environ` (`for k in`, `.keys()`, `.items()`, `.copy()`, `len`, `dict(...)`), and at replay
the walk goes over the recorded names, each answered from the recorded snapshot, whatever the environment
of the replaying process holds. urllib's proxy lookup (which httpx and requests use) walks it this way."""

from __future__ import annotations

import os
import urllib.request

import pytest
from typer.testing import CliRunner

import fluxrun
from fluxrun.agent.mask import mask_payload
from fluxrun.cli import app as cli_app
from fluxrun.scrub import default_scrubber

SECRET = "sk-live-0123456789abcdefghij"
MODE = {"walk": True}


@fluxrun.capture
def feature_report() -> None:
    features = sorted(k for k in os.environ if k.startswith("APP_FEATURE_"))
    keys = sorted(k for k in os.environ.keys() if k.startswith("APP_"))  # noqa: SIM118 - the keys view walks it
    items = sorted((k, v) for k, v in os.environ.items() if k.startswith("APP_"))
    copied = {k: v for k, v in os.environ.copy().items() if k.startswith("APP_")}
    as_dict = {k: v for k, v in dict(os.environ).items() if k.startswith("APP_")}
    raise RuntimeError(f"{features} {keys} {items} {copied == as_dict} count={len(os.environ)}")


@fluxrun.capture
def proxy_report() -> None:
    raise RuntimeError(f"proxies: {urllib.request.getproxies()}")  # walks os.environ.items()


@fluxrun.capture
def run_id_report() -> None:
    os.environ["APP_RUN_ID"] = "r-1"  # set by the code itself: seen in the walk at replay as at capture
    raise RuntimeError(str(sorted(k for k in os.environ if k.startswith("APP_"))))


@fluxrun.capture
def maybe_walk() -> None:
    token = os.environ["APP_TOKEN"]
    if MODE["walk"]:
        raise RuntimeError(str(len([k for k in os.environ if k.startswith("APP_")])))
    raise RuntimeError(token[:2])


@pytest.fixture(autouse=True)
def environment(monkeypatch):
    MODE["walk"] = True
    for key in [k for k in os.environ if k.startswith("APP_") or k.lower().endswith("_proxy")]:
        monkeypatch.delenv(key)
    monkeypatch.delenv("REQUEST_METHOD", raising=False)
    monkeypatch.setenv("APP_FEATURE_SEARCH", "on")
    monkeypatch.setenv("APP_FEATURE_CART", "beta")
    monkeypatch.setenv("APP_TOKEN", SECRET)
    monkeypatch.setenv("APP_RUN_ID", "placeholder")  # registered for restore; removed before each capture
    monkeypatch.delenv("APP_RUN_ID")


def _capture(captured, function):
    with pytest.raises(RuntimeError) as raised:
        function()
    (path,) = captured.files()
    fluxrun.shutdown()
    return path, str(raised.value)


def _another_environment(monkeypatch):
    """The replaying process's environment: variables gone, changed and new since the capture."""
    monkeypatch.delenv("APP_FEATURE_CART")
    monkeypatch.setenv("APP_FEATURE_NEW", "on")
    monkeypatch.setenv("APP_TOKEN", "ci-placeholder")
    monkeypatch.setenv("CI_ONLY_VARIABLE", "1")


def test_walking_the_environment_replays_the_recorded_names_and_values(captured, keys, monkeypatch):
    path, message = _capture(captured, feature_report)
    assert "['APP_FEATURE_CART', 'APP_FEATURE_SEARCH']" in message
    _another_environment(monkeypatch)
    for _ in range(2):
        result = fluxrun.replay.run(path, keys.replay, expect="reproduce")
        assert result.new.message == message  # names, values and count as they were, not as they are now
        assert result.unconsumed == []


def test_urllib_s_proxy_walk_is_served_from_the_tape(captured, keys, monkeypatch):
    monkeypatch.setenv("https_proxy", "http://proxy.internal:3128")
    path, message = _capture(captured, proxy_report)
    assert "proxy.internal:3128" in message
    monkeypatch.delenv("https_proxy")
    monkeypatch.setenv("HTTP_PROXY", "http://ci-proxy:8080")
    result = fluxrun.replay.run(path, keys.replay, expect="reproduce")
    assert result.new.message == message


def test_a_variable_the_code_sets_itself_is_in_the_walk_at_replay(captured, keys, monkeypatch):
    path, message = _capture(captured, run_id_report)
    assert "APP_RUN_ID" in message
    monkeypatch.delenv("APP_RUN_ID")  # the capture set it in this process
    _another_environment(monkeypatch)
    result = fluxrun.replay.run(path, keys.replay, expect="reproduce")
    assert result.new.message == message


def test_walking_where_the_capture_did_not_is_a_divergence(captured, keys):
    MODE["walk"] = False
    path, _ = _capture(captured, maybe_walk)
    MODE["walk"] = True
    with pytest.raises(fluxrun.ReplayDivergence, match="environment") as raised:
        fluxrun.replay.run(path, keys.replay)
    assert "test_env_iteration.py" in str(raised.value)  # where the code walked it


def test_the_walk_keeps_secrets_encrypted_and_masked(captured, keys):
    path, _ = _capture(captured, feature_report)
    assert SECRET not in path.read_bytes().decode("latin-1")  # encrypted in the payload
    shown = CliRunner().invoke(cli_app, ["bundle", "inspect", str(path), "--key", str(keys.replay)])
    assert shown.exit_code == 0, shown.output
    assert "APP_TOKEN" in shown.output and SECRET not in shown.output and SECRET[-6:] not in shown.output
    from fluxrun.bundle import open_bundle

    opened = open_bundle(path.read_bytes(), keys.replay_key)
    assert SECRET not in str(opened.summary)
    assert SECRET not in str(mask_payload(opened.payload, default_scrubber()))
