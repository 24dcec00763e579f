"""A replay reaches nothing live: not from C (libpq), not through a subprocess, DNS or a datagram.

Each function below is captured for real (its IO happens), then replayed through the public
`fluxrun.replay.run`. The replay runs in a child process without network; whatever the code tries
outside the recording fails the replay with `LiveIOBlocked` naming it, and the live system is unchanged.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres import Cluster, cluster_with  # tests/support, on the path from tests/conftest.py

import fluxrun
from fluxrun.errors import LiveIOBlocked


@pytest.fixture(scope="module")
def postgres() -> Iterator[Cluster]:
    with cluster_with("CREATE TABLE orders (id serial PRIMARY KEY, note text)") as cluster:
        yield cluster


def count_orders(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        return int(conn.execute("SELECT count(*) FROM orders").fetchone()[0])  # type: ignore[index]


@fluxrun.capture
def insert_then_fail(dsn: str) -> None:
    """libpq itself (psycopg's `pq` layer, below the psycopg API FluxRun intercepts): C code's own socket."""
    from psycopg import pq

    conn = pq.PGconn.connect(dsn.encode())
    try:
        if conn.status != pq.ConnStatus.OK:
            raise ConnectionError(conn.error_message.decode(errors="replace"))
        conn.exec_(b"INSERT INTO orders (note) VALUES ('written by the request')")
    finally:
        conn.finish()
    raise RuntimeError("order rejected after the insert")


@fluxrun.capture
def run_a_command(marker: str) -> None:
    subprocess.run(["touch", marker], check=True)
    raise RuntimeError("after the command")


@fluxrun.capture
def resolve_a_host() -> None:
    socket.gethostbyname("localhost")
    raise RuntimeError("after the lookup")


@fluxrun.capture
def send_a_datagram(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"metric:1|c", ("127.0.0.1", port))
    raise RuntimeError("after the datagram")


@fluxrun.capture
def swallow_a_command(marker: str) -> None:
    with contextlib.suppress(Exception):  # the app hides the failure: the replay must still fail
        subprocess.run(["touch", marker], check=True)
    raise RuntimeError("after the command")


def replay(captured, function):  # type: ignore[no-untyped-def]
    [path] = captured.files()
    return fluxrun.replay.run(path, captured.keys.replay, app=function)


@pytest.mark.parametrize("via", ["tcp", "unix socket"])
def test_a_libpq_insert_never_reaches_the_database_at_replay(captured, postgres: Cluster, via: str) -> None:
    dsn = postgres.dsn if via == "tcp" else postgres.socket_dsn
    with pytest.raises(RuntimeError):
        insert_then_fail(dsn)
    assert count_orders(postgres.dsn) >= 1
    before = count_orders(postgres.dsn)
    try:
        result = replay(captured, insert_then_fail)
    except LiveIOBlocked as blocked:  # TCP: the kernel saw libpq's attempt in the replay's namespace
        assert "below Python" in str(blocked) or "127.0.0.1" in str(blocked)
    else:  # Unix socket: seccomp refused libpq's socket; the app failed differently, so it is not a reproduction
        assert result.outcome == "changed", result.summary()
        assert result.new.error_type == "builtins:ConnectionError"
    assert count_orders(postgres.dsn) == before


def test_a_subprocess_does_not_run_at_replay(captured, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(RuntimeError):
        run_a_command(str(marker))
    marker.unlink()
    with pytest.raises(LiveIOBlocked, match=r"process touch .*ran"):
        replay(captured, run_a_command)
    assert not marker.exists()


def test_a_swallowed_subprocess_still_fails_the_replay(captured, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(RuntimeError):
        swallow_a_command(str(marker))
    marker.unlink()
    with pytest.raises(LiveIOBlocked, match="process touch"):
        replay(captured, swallow_a_command)
    assert not marker.exists()


def test_gethostbyname_is_blocked_at_replay(captured) -> None:
    with pytest.raises(RuntimeError):
        resolve_a_host()
    with pytest.raises(LiveIOBlocked, match="DNS lookup of localhost"):
        replay(captured, resolve_a_host)


def test_a_udp_datagram_is_not_sent_at_replay(captured) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(2)
        port = receiver.getsockname()[1]
        with pytest.raises(RuntimeError):
            send_a_datagram(port)
        assert receiver.recv(100) == b"metric:1|c"
        with pytest.raises(LiveIOBlocked, match=f"datagram to 127.0.0.1:{port}"):
            replay(captured, send_a_datagram)
        receiver.settimeout(0.3)
        with pytest.raises(TimeoutError):
            receiver.recv(100)


def test_the_result_says_which_protection_held(captured, tmp_path: Path) -> None:
    @fluxrun.capture
    def fails() -> None:
        raise KeyError("unit_price")

    with pytest.raises(KeyError):
        fails()
    result = replay(captured, fails)
    assert result.outcome == "reproduced"
    assert "network namespace" in result.isolation
    assert "isolation: network namespace" in result.summary()


def test_isolation_can_be_turned_off_and_says_so(captured, monkeypatch: pytest.MonkeyPatch) -> None:
    @fluxrun.capture
    def fails() -> None:
        raise KeyError("unit_price")

    with pytest.raises(KeyError):
        fails()
    monkeypatch.setenv("FLUXRUN_REPLAY_ISOLATE", "0")
    result = replay(captured, fails)
    assert result.outcome == "reproduced"
    assert result.isolation.startswith("off")
