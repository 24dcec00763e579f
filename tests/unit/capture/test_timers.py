"""Sleeps are recorded with the requested delay, sync and async."""

from __future__ import annotations

import asyncio
import time

import pytest

import fluxrun


def test_time_sleep_is_recorded(captured):
    @fluxrun.capture
    def job():
        time.sleep(0.01)
        raise RuntimeError("after sleep")

    with pytest.raises(RuntimeError):
        job()
    (event,) = captured.events("timer")
    assert event["call"] == "time.sleep"
    assert event["data"] == {"seconds": 0.01}
    assert event["dur_ns"] >= 5_000_000


@pytest.mark.anyio
async def test_asyncio_sleep_is_recorded(captured):
    @fluxrun.capture
    async def job():
        await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        raise RuntimeError("after sleep")

    with pytest.raises(RuntimeError):
        await job()
    events = captured.events("timer")
    assert [(e["call"], e["data"]["seconds"]) for e in events] == [
        ("asyncio.sleep", 0.01),
        ("asyncio.sleep", 0),
    ]


class Backoff(float):
    """A delay of a float subclass, as tenacity passes (`DoSleep`) to `time.sleep`."""


def test_a_delay_of_a_float_subclass_is_recorded_as_a_number(captured):
    @fluxrun.capture
    def job():
        time.sleep(Backoff(0.01))
        raise RuntimeError("after a retry's backoff")

    with pytest.raises(RuntimeError):
        job()
    (event,) = captured.events("timer")
    assert event["data"] == {"seconds": 0.01}
