"""Shipping through the public API: `fluxrun.init(dsn=...)`, flush, shutdown, `fluxrun.stats()`, and fork."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest
from shipping_fixtures import Answer

import fluxrun
from fluxrun._context import current
from fluxrun.bundle import open_bundle, read_bundle
from fluxrun.errors import ConfigError
from fluxrun.shipping.base import start_thread


@pytest.fixture
def shipping(ingest, keys, tmp_path):
    """FluxRun initialised with a DSN pointing at the fake server; shut down at the end."""
    fluxrun.init(dsn=ingest.dsn, directory=tmp_path / "app", capture_key=keys.capture)
    try:
        yield ingest
    finally:
        fluxrun.shutdown()


@fluxrun.capture
def job(tag: str) -> None:
    raise RuntimeError(tag)


def fail(tag: str) -> None:
    with pytest.raises(RuntimeError):
        job(tag)


def messages(bundles: list[bytes]) -> list[str]:
    return [read_bundle(b).summary["error"]["message"] for b in bundles]


def test_failures_captured_with_a_dsn_reach_the_server_and_are_counted(shipping, tmp_path):
    for tag in ("first", "second", "third"):
        fail(tag)
    assert fluxrun.flush(5.0)  # includes delivery
    assert sorted(messages(shipping.accepted)) == ["first", "second", "third"]
    assert not (tmp_path / "app").exists() or not list((tmp_path / "app").glob("*.fluxrun"))  # not the folder
    stats = fluxrun.stats()
    assert stats["queued"] == 3 and stats["sealed"] == 3 and stats["sent"] == 3
    assert stats["dropped"] == 0 and stats["pending"] == 0 and stats["failed"] == 0


def test_stats_have_the_same_names_before_during_and_after(ingest, keys, tmp_path):
    names = set(fluxrun.stats())
    assert {"queued", "sealed", "dropped_queue_full", "failed", "sent", "retried", "spooled"} <= names
    assert {"delivered_from_spool", "dropped", "batches", "pending", "spool_files", "spool_bytes"} <= names
    fluxrun.init(dsn=ingest.dsn, directory=tmp_path / "app", capture_key=keys.capture)
    try:
        assert set(fluxrun.stats()) == names and not any(fluxrun.stats().values())
        ingest.default = Answer(401, detail="ingest token is unknown or revoked")
        fail("refused")
        assert fluxrun.flush(5.0)
    finally:
        fluxrun.shutdown()
    final = fluxrun.stats()  # after shutdown: the last client's final counters
    assert final["dropped_http_401"] == 1 and final["dropped"] == 1 and final["sealed"] == 1


def test_without_a_dsn_bundles_still_go_to_the_folder(captured):
    fail("local")
    assert len(captured.files()) == 1
    stats = fluxrun.stats()
    assert stats["sealed"] == 1 and stats["sent"] == 0


def test_a_plain_http_dsn_to_another_host_is_refused_at_init(keys, tmp_path):
    with pytest.raises(ConfigError, match="http:// is accepted only for loopback"):
        fluxrun.init(dsn="http://frt_x@fluxrun.example.com/p", directory=tmp_path, capture_key=keys.capture)
    fluxrun.shutdown()


def test_shutdown_spools_what_a_down_server_did_not_take_and_the_next_start_delivers_it(ingest, keys, tmp_path):
    ingest.stop()
    fluxrun.init(dsn=ingest.dsn, directory=tmp_path / "app", capture_key=keys.capture)
    fail("while down")
    started = time.monotonic()
    assert fluxrun.shutdown(2.0)
    assert time.monotonic() - started < 3.0
    assert fluxrun.stats()["spool_files"] == 1 and len(list((tmp_path / "app" / "spool").glob("*.fluxrun"))) == 1

    ingest.start()
    fluxrun.init(dsn=ingest.dsn, directory=tmp_path / "app", capture_key=keys.capture)
    try:
        assert messages(ingest.wait_for(1)) == ["while down"]
    finally:
        fluxrun.shutdown()


def test_fluxrun_threads_run_outside_any_capture(captured):
    seen = []

    @fluxrun.capture
    def work() -> None:
        assert current() is not None
        start_thread(lambda: seen.append(current()), "probe").join(5)

    work()
    assert seen == [None]


def test_flushing_inside_a_capture_records_nothing_of_fluxrun_itself(shipping, keys):
    shipping.default = Answer(202, delay=0.2)  # the sender is busy while the next execution runs
    fail("before")

    @fluxrun.capture
    def inner() -> None:
        assert fluxrun.flush(5.0)
        raise RuntimeError("inner")

    with pytest.raises(RuntimeError):
        inner()
    assert fluxrun.flush(5.0)
    (opened,) = [open_bundle(b, keys.replay_key) for b in shipping.accepted if b"inner" in b]
    assert opened.payload["events"] == []  # no clock, socket, random or thread events from the SDK


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_worker_ships_its_own_failures_once(shipping):
    shipping.default = Answer(202, delay=0.3)  # the parent still has a bundle in flight when it forks
    fail("parent")
    time.sleep(0.05)
    pid = os.fork()
    if pid == 0:  # the child, like a gunicorn worker forked after fluxrun.init
        code = 1
        try:
            fail("child")
            flushed = fluxrun.flush(10.0)
            stats = fluxrun.stats()
            code = 0 if flushed and stats["queued"] == 1 and stats["sent"] == 1 and stats["dropped"] == 0 else 2
        except BaseException:
            code = 3
        finally:
            sys.stdout.flush()
            os._exit(code)
    deadline = time.monotonic() + 30
    while (done := os.waitpid(pid, os.WNOHANG)) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert done[0] == pid, "the child did not finish"
    assert os.waitstatus_to_exitcode(done[1]) == 0
    assert fluxrun.flush(5.0)
    time.sleep(0.3)  # a doubled send would land now
    assert sorted(messages(shipping.accepted)) == ["child", "parent"]  # each once: the child did not resend
    assert fluxrun.stats()["sent"] == 1  # the parent's counters are its own


def test_the_sealing_worker_in_a_forked_child_starts_fresh(captured):
    client = fluxrun._client.get_client()
    assert client is not None
    lock = client.worker._lock
    lock.acquire()  # as if the parent's thread held it at the fork
    try:
        client.worker._after_fork_in_child()
        assert client.worker._lock is not lock and client.worker._thread is None
        assert client.worker._lock.acquire(timeout=0.1)
    finally:
        lock.release()
    assert threading.active_count() >= 1
