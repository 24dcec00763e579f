"""A fix that makes calls the recording never saw is confirmed with answers the test supplies, strictly."""

from __future__ import annotations

import os
import shutil

import httpx
import pytest

import fluxrun
from fluxrun.errors import ReplayDivergence
from fluxrun.replay import Answers

pytest_plugins = ["pytester"]
MODE = {"fixed": False}


def pricing(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/v2/items/7":
        return httpx.Response(200, json={"unit": {"amount": 10}})  # the new schema that broke production
    return httpx.Response(200, json={"price": 12})


@fluxrun.boundary("inventory.reserve")
def reserve(sku: int) -> dict[str, int]:
    raise RuntimeError("the real inventory must never be called at replay")


@fluxrun.capture
def total(sku: int) -> float:
    with httpx.Client(transport=httpx.MockTransport(pricing)) as client:
        item = client.get(f"https://pricing.test/v2/items/{sku}").json()
        if not MODE["fixed"]:
            return float(item["price"])  # KeyError: the bug
        # the fix: fall back to the v1 endpoint, behind a flag, and reserve stock first
        if os.environ.get("PRICING_FALLBACK") == "on":
            reserve(sku)
            item = client.get(f"https://pricing.test/v1/items/{sku}").json()
        return float(item["price"])


@pytest.fixture
def bundle(captured):
    MODE["fixed"] = False
    with pytest.raises(KeyError):
        total(7)
    [path] = captured.files()
    yield path
    MODE["fixed"] = False


def test_without_answers_the_fix_diverges_on_its_new_call(bundle, keys) -> None:
    MODE["fixed"] = True
    with pytest.raises(ReplayDivergence, match="env PRICING_FALLBACK has no recorded answer"):
        fluxrun.replay.run(bundle, keys.replay)


def test_supplied_answers_confirm_the_fix_and_are_listed(bundle, keys) -> None:
    MODE["fixed"] = True
    answers = (
        Answers()
        .env("PRICING_FALLBACK", "on")
        .boundary("inventory.reserve", result={"count": 3})
        .http("GET", "https://pricing.test/v1/items/7", json={"price": 12})
    )
    result = fluxrun.replay.run(bundle, keys.replay, answers=answers, expect="fixed")
    assert result.outcome == "fixed"
    assert result.value == 12.0
    assert result.supplied == [
        "env env PRICING_FALLBACK (1 call)",
        "host inventory.reserve (1 call)",
        "http GET https://pricing.test/v1/items/7 (1 call)",
    ]
    assert "answered by the test, not the recording" in result.summary()


def test_a_call_with_neither_a_recorded_nor_a_supplied_answer_still_diverges(bundle, keys) -> None:
    MODE["fixed"] = True
    answers = Answers().env("PRICING_FALLBACK", "on").boundary("inventory.reserve", result={"count": 3})
    with pytest.raises(ReplayDivergence, match=r"GET https://pricing\.test/v1/items/7 has no recorded answer"):
        fluxrun.replay.run(bundle, keys.replay, answers=answers)


def test_a_recorded_answer_wins_and_an_unused_supplied_one_is_a_warning(bundle, keys) -> None:
    answers = Answers().http("GET", "https://pricing.test/v2/items/7", json={"price": 1})
    result = fluxrun.replay.run(bundle, keys.replay, answers=answers, expect="reproduce")
    assert result.supplied == []
    assert result.warnings == ["a supplied answer was never used: http GET https://pricing.test/v2/items/7"]


def test_the_replay_marker_takes_answers(pytester, bundle, keys, monkeypatch) -> None:
    monkeypatch.setenv("FLUXRUN_REPLAY_KEY", str(keys.replay))
    shutil.copy(bundle, pytester.path / "total.fluxrun")
    pytester.makepyfile(
        test_fix="""
        import fluxrun
        import test_supplied_answers as shop
        from fluxrun.replay import Answers

        answers = (
            Answers()
            .env("PRICING_FALLBACK", "on")
            .boundary("inventory.reserve", result={})
            .http("GET", "https://pricing.test/v1/items/7", json={"price": 12})
        )

        @fluxrun.replay("total.fluxrun", app=shop.total, answers=answers)
        def test_total_is_fixed(fluxrun_replay):
            assert fluxrun_replay.supplied[-1] == "http GET https://pricing.test/v1/items/7 (1 call)"
        """
    )
    MODE["fixed"] = True
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
