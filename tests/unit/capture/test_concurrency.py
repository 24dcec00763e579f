"""Concurrent tasks and threads: events carry their lineage, and executions never mix."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import pytest

import fluxrun


@pytest.mark.anyio
async def test_gathered_tasks_get_their_own_lineage(captured, monkeypatch):
    monkeypatch.setenv("A", "1")
    monkeypatch.setenv("B", "2")

    async def child(name):
        os.getenv(name)  # env is a snapshot per execution: one event per key, in the task that read it first
        await asyncio.sleep(0)
        time.time()

    @fluxrun.capture
    async def job():
        os.getenv("A")
        await asyncio.gather(child("A"), child("B"))
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        await job()
    env = [(e["task"], e["data"]["key"]) for e in captured.events("env")]
    assert env == [("0", "A"), ("0.2", "B")]
    assert sorted(e["task"] for e in captured.events("time")) == ["0.1", "0.2"]


def read_wall_clock():
    return time.time()


def read_monotonic_clock():
    return time.monotonic()


def test_threads_and_pools_inherit_the_execution(captured):
    @fluxrun.capture
    def job():
        thread = threading.Thread(target=read_wall_clock)
        thread.start()
        thread.join()
        with ThreadPoolExecutor(max_workers=2) as pool:
            pool.submit(read_monotonic_clock).result()
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        job()
    events = captured.events("time")
    assert [(e["call"], e["task"]) for e in events] == [("time.time", "0.1"), ("time.monotonic", "0.2")]


@pytest.mark.anyio
async def test_concurrent_executions_do_not_mix(captured):
    @fluxrun.capture
    async def job(n):
        for _ in range(n):
            time.time()
            await asyncio.sleep(0)
        raise RuntimeError(n)

    results = await asyncio.gather(*(job(n) for n in range(1, 21)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    payloads = captured.payloads()
    assert len(payloads) == 20
    for payload in payloads:
        n = payload["request"]["args"][0]
        assert sum(e["kind"] == "time" for e in payload["events"]) == n
        assert {e["task"] for e in payload["events"]} == {"0"}


def test_threads_outside_an_execution_record_nothing(captured):
    thread = threading.Thread(target=read_wall_clock)
    thread.start()
    thread.join()
    assert captured.payloads() == []


def test_a_task_that_outlives_its_execution_adds_nothing_to_it(captured):
    """A task the request started and left running (a refresher started on first use) goes on calling after the
    execution ended: those calls are neither held by the ended execution until the task ends nor sealed into its
    bundle, which holds what the execution did up to its end."""
    background: list[asyncio.Task[None]] = []

    async def refresher(ended: asyncio.Event) -> None:
        await ended.wait()
        for i in range(20_000):
            time.time()
            if i % 1_000 == 0:
                await asyncio.sleep(0)

    @fluxrun.capture
    async def handler(ended: asyncio.Event) -> None:
        background.append(asyncio.create_task(refresher(ended)))
        time.time()
        raise RuntimeError("failed")

    async def main() -> int:
        ended = asyncio.Event()
        with pytest.raises(RuntimeError):
            await handler(ended)
        tracemalloc.start()
        ended.set()
        await background[0]
        grown = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        return grown

    grown = asyncio.run(main())
    assert grown < 500_000, f"{grown:,} bytes held after the execution ended"  # 20,000 entries held: ~3 MB
    assert [e["task"] for e in captured.events("time")] == ["0"]
