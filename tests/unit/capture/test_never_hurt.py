"""An error inside FluxRun is logged once and the app's call proceeds as if FluxRun were absent."""

from __future__ import annotations

import logging
import sys
import time
import types

import pytest

import fluxrun
from fluxrun.model.recording import Recording


def test_a_failing_recorder_never_breaks_the_apps_call(captured, monkeypatch, caplog):
    def broken_log(self):
        raise RuntimeError("recorder exploded")

    # every recorded call appends to the execution's log
    monkeypatch.setattr(Recording, "log", property(broken_log, lambda self, value: None))

    @fluxrun.capture
    def job():
        return [time.time() > 0 for _ in range(3)]

    with caplog.at_level(logging.WARNING, logger="fluxrun"):
        assert job() == [True, True, True]
    messages = [r.getMessage() for r in caplog.records if "time capture" in r.getMessage()]
    assert len(messages) == 1 and "recorder exploded" in messages[0]  # logged once, not once per call
    assert "stepped aside" in messages[0]


def test_app_exceptions_pass_through_unchanged(captured):
    class Boom(Exception):
        pass

    error = Boom("original")

    @fluxrun.capture
    def job():
        raise error

    with pytest.raises(Boom) as raised:
        job()
    assert raised.value is error


def test_unintercepted_http_clients_are_reported_at_start_up(keys, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "httplib2", types.ModuleType("httplib2"))
    with caplog.at_level(logging.WARNING, logger="fluxrun"):
        fluxrun.init(directory=tmp_path, capture_key=keys.capture)
        fluxrun.shutdown()
    (message,) = [r.getMessage() for r in caplog.records if "does not intercept" in r.getMessage()]
    assert "httplib2" in message and "@fluxrun.boundary" in message


def test_without_a_capture_key_fluxrun_says_what_to_do_and_captures_nothing(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("FLUXRUN_CAPTURE_KEY", raising=False)
    with caplog.at_level(logging.WARNING, logger="fluxrun"):
        fluxrun.init(directory=tmp_path)
    try:

        @fluxrun.capture
        def job():
            raise RuntimeError("x")

        with pytest.raises(RuntimeError):
            job()
        assert fluxrun.flush()
    finally:
        fluxrun.shutdown()
    assert any("fluxrun keys generate" in r.getMessage() for r in caplog.records)
    assert list(tmp_path.iterdir()) == []


def test_a_full_queue_drops_and_counts_without_blocking(capture_with, monkeypatch):
    captured = capture_with(max_queue=1)
    client = fluxrun._client.get_client()
    assert client is not None
    release = __import__("threading").Event()
    real_write = client.sink.write

    def slow_write(name, data):
        release.wait(5)
        return real_write(name, data)

    monkeypatch.setattr(client.sink, "write", slow_write)

    @fluxrun.capture
    def job():
        raise RuntimeError("x")

    started = time.perf_counter()
    for _ in range(5):
        with pytest.raises(RuntimeError):
            job()
    assert time.perf_counter() - started < 1.0  # the request path never waited on the writer
    release.set()
    assert len(captured.files()) + client.worker.stats["dropped_queue_full"] == 5
    assert client.worker.stats["dropped_queue_full"] >= 3


def test_shutdown_restores_every_patched_function(keys, tmp_path):
    import asyncio
    import logging as logging_module
    import os
    import random
    import threading
    import uuid

    import httpx

    targets = [
        (time, "time"), (time, "sleep"), (asyncio, "sleep"), (random, "random"), (uuid, "uuid4"), (os, "urandom"),
        (type(os.environ), "__getitem__"), (logging_module.Logger, "handle"), (threading.Thread, "start"),
        (httpx.Client, "send"), (httpx.AsyncClient, "send"),
    ]  # fmt: skip
    before = [vars(owner)[name] if isinstance(owner, type) else getattr(owner, name) for owner, name in targets]
    fluxrun.init(directory=tmp_path, capture_key=keys.capture)
    during = [vars(owner)[name] if isinstance(owner, type) else getattr(owner, name) for owner, name in targets]
    fluxrun.shutdown()
    after = [vars(owner)[name] if isinstance(owner, type) else getattr(owner, name) for owner, name in targets]
    assert all(b is not d for b, d in zip(before, during, strict=True))
    assert all(b is a for b, a in zip(before, after, strict=True))


def test_init_twice_replaces_the_first_configuration(keys, tmp_path):
    original = time.time
    fluxrun.init(directory=tmp_path / "a", capture_key=keys.capture)
    fluxrun.init(directory=tmp_path / "b", capture_key=keys.capture)
    fluxrun.shutdown()
    assert time.time is original


def test_env_misses_inside_the_standard_library_are_recorded_as_absent_and_not_reported(captured, monkeypatch, caplog):
    import os

    monkeypatch.delenv("HOME", raising=False)

    @fluxrun.capture
    def job():
        os.path.expanduser("~")  # posixpath probes os.environ["HOME"] and handles the KeyError itself
        raise RuntimeError("x")

    with caplog.at_level(logging.WARNING, logger="fluxrun"), pytest.raises(RuntimeError):
        job()
    assert not [r for r in caplog.records if "stepped aside" in r.getMessage()]
    (event,) = captured.events("env")  # env is a snapshot of every variable read, whoever reads it
    assert event["call"] == "env HOME" and event["error"]["present"] is False
