"""Concurrent tasks and threads: events carry their lineage, and executions never mix."""

from __future__ import annotations

import asyncio
import os
import threading
import time
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
