"""IO that FluxRun does not record is named in the summary at capture: the bundle says it is not
replay-ready before anyone tries to replay it."""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import fluxrun
from fluxrun.bundle import read_bundle

pytest_plugins = ["pytester"]


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@fluxrun.capture
def raw_socket(address: str) -> None:
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=5):
        pass
    raise RuntimeError("after a connection FluxRun does not intercept")


@fluxrun.capture
def metrics_and_a_command(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as statsd:
        for _ in range(3):
            statsd.sendto(b"orders:1|c", ("127.0.0.1", port))
    subprocess.run(["true"], check=True)
    raise RuntimeError("after a datagram and a command")


@fluxrun.capture
def through_httpx(address: str) -> None:
    httpx.get(f"http://{address}/", timeout=5)  # the pool's own connect belongs to the recorded fetch
    raise RuntimeError("after a recorded fetch")


def summary(captured) -> dict:  # type: ignore[no-untyped-def,type-arg]
    [path] = captured.files()
    return read_bundle(path.read_bytes()).summary


def test_a_connection_no_client_recorded_makes_the_bundle_not_replay_ready(captured, upstream: str) -> None:
    with pytest.raises(RuntimeError):
        raw_socket(upstream)
    shown = summary(captured)
    assert shown["replay_ready"] is False
    assert shown["not_replay_ready"] == [f"1 connection to {upstream} was not recorded"]


def test_datagrams_and_processes_are_named_once_each(captured) -> None:
    with pytest.raises(RuntimeError):
        metrics_and_a_command(9)
    shown = summary(captured)
    assert shown["not_replay_ready"] == [
        "1 datagram to 127.0.0.1:9 was not recorded",
        "1 process true was not recorded",
    ]


def test_a_recorded_fetch_keeps_the_bundle_replay_ready(captured, upstream: str) -> None:
    with pytest.raises(RuntimeError):
        through_httpx(upstream)
    shown = summary(captured)
    assert shown["replay_ready"] is True
    assert "not_replay_ready" not in shown


def test_a_failing_guard_repeats_what_the_capture_said(pytester, captured, upstream: str, keys, monkeypatch) -> None:
    monkeypatch.setenv("FLUXRUN_REPLAY_KEY", str(keys.replay))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    with pytest.raises(RuntimeError):
        raw_socket(upstream)
    [path] = captured.files()
    (pytester.path / "bundles").mkdir()
    (pytester.path / "bundles" / "raw.fluxrun").write_bytes(path.read_bytes())
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--fluxrun-bundles", "bundles", f"--fluxrun-app={__name__}:raw_socket"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*LiveIOBlocked*", f"*its capture already said it is not replay-ready: 1 connection to {upstream}*"]
    )
