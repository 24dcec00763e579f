"""A call still in flight when the captured execution ended (recorded with no outcome: pending) never
delivered anything to the app, so a replay that ends before making it has not left out a recorded call:
`expect="reproduce"` holds strictly. A recorded call that did answer and is not made still fails it."""

from __future__ import annotations

import asyncio

import httpx
import pytest

import fluxrun
from fluxrun.replay import ReplayExpectationError

DELAYS = {"fail": 0.0, "profile": 0.02, "profile-retry": 5.0}
MODE = {"extra": False}


async def upstream(request: httpx.Request) -> httpx.Response:
    name = request.url.path.strip("/")
    await asyncio.sleep(DELAYS.get(name, 0.0))
    return httpx.Response(500 if name in ("fail", "profile") else 200, json={"name": name})


@fluxrun.capture
async def feed() -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as client:

        async def recommendations() -> None:
            (await client.get("https://shop.test/fail")).raise_for_status()

        async def profile() -> None:
            if (await client.get("https://shop.test/profile")).status_code == 500:
                await client.get("https://shop.test/profile-retry")  # still in flight when the execution ends

        try:
            await asyncio.gather(recommendations(), profile())
        finally:
            if MODE["extra"]:
                await client.get("https://shop.test/audit")
            await asyncio.sleep(0.1)  # the route's cleanup: the profile's answer and its retry start meanwhile


@pytest.fixture(autouse=True)
def reset():
    MODE["extra"] = False


def _capture(captured):
    with pytest.raises(httpx.HTTPStatusError):
        asyncio.run(feed())
    (path,) = captured.files()
    events = captured.events("http")
    fluxrun.shutdown()
    return path, events


def test_a_call_pending_at_the_end_is_not_a_recorded_call_never_made(captured, keys):
    path, events = _capture(captured)
    retry = next(e for e in events if e["call"].endswith("/profile-retry"))
    assert "response" not in retry["data"] and "error" not in retry  # recorded pending: it never completed
    for _ in range(3):
        result = fluxrun.replay.run(path, keys.replay, expect="reproduce")
        assert result.outcome == "reproduced"
        assert result.unconsumed == []


def test_a_call_that_answered_and_is_not_made_still_fails_reproduce(captured, keys):
    MODE["extra"] = True
    path, _ = _capture(captured)
    MODE["extra"] = False
    with pytest.raises(ReplayExpectationError, match="recorded calls were never made") as raised:
        fluxrun.replay.run(path, keys.replay, expect="reproduce")
    assert [e["call"] for e in raised.value.result.unconsumed] == ["GET https://shop.test/audit"]
