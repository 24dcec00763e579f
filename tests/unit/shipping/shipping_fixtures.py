"""A scripted stand-in for the ingest server on loopback, a fake clock, and sinks wired to them.

The fake speaks the real wire format: it reads bodies with the server's own `decompress` and
`decode_batch`, answers `{"accepted": [...], "rejected": [...]}`, and keeps connections alive (HTTP/1.1)
like uvicorn does. It can be stopped (connection refused) and started again on the same port.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import server_process
from servers import free_port

from fluxrun.shipping.http import Clock, HttpSink, ShipConfig, parse_dsn
from fluxrun_server.ingest.batch import decode_batch, decompress

TOKEN = "frt_test_token_value"


@dataclass
class Answer:
    status: int = 202
    headers: dict[str, str] = field(default_factory=dict)
    detail: str | None = None
    delay: float = 0.0  # seconds before answering (a slow server)


@dataclass
class Seen:
    """One request as the fake read it."""

    at: float  # the test's clock (fake or real) when it arrived
    headers: dict[str, str]
    bundles: list[bytes]
    status: int


class FakeIngest:
    """POST /v1/executions on 127.0.0.1; answers from `script` first, then `default`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.port = free_port()
        self.clock = clock
        self.script: deque[Answer] = deque()
        self.default = Answer()
        self.reject: Callable[[bytes], str | None] = lambda bundle: None  # a reason rejects that bundle alone
        self.refuse: Callable[[list[bytes]], Answer | None] = lambda bundles: None  # answer by content
        self.seen: list[Seen] = []
        self.accepted: list[bytes] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()

    @property
    def dsn(self) -> str:
        return f"http://{TOKEN}@127.0.0.1:{self.port}/acme-shop"

    def start(self) -> FakeIngest:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with fake.lock:
                    fake._connections.add(self.connection)

            def finish(self) -> None:
                with fake.lock:
                    fake._connections.discard(self.connection)
                super().finish()

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                fake._handle(self, body)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that gave up on a slow answer closes its end: expected here

        server = Server(("127.0.0.1", self.port), Handler)
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def stop(self) -> None:
        """Close the port and every open connection: the next connect is refused."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self.lock:
            connections = list(self._connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            except OSError:
                pass

    def _handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        bundles = decode_batch(
            decompress(body, handler.headers.get("content-encoding"), 64 << 20),
            max_bundles=1000,
            max_bundle_bytes=8 << 20,
        )
        with self.lock:
            answer = self.script.popleft() if self.script else (self.refuse(bundles) or self.default)
            self.seen.append(
                Seen(self.clock(), {k.lower(): v for k, v in handler.headers.items()}, bundles, answer.status)
            )
        if answer.delay:
            time.sleep(answer.delay)
        if answer.status == 202:
            accepted, rejected = [], []
            for index, bundle in enumerate(bundles):
                reason = self.reject(bundle)
                if reason is None:
                    accepted.append(bundle)
                else:
                    rejected.append({"index": index, "bundle_id": None, "reason": reason, "message": f"it is {reason}"})
            with self.lock:
                self.accepted += accepted
            payload = {"accepted": [b.decode(errors="replace")[:40] for b in accepted], "rejected": rejected}
        else:
            payload = {"detail": answer.detail or f"status {answer.status}"}
        data = json.dumps(payload).encode()
        handler.send_response(answer.status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(data)))
        for name, value in answer.headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[bytes]:
        """The accepted bundles once there are at least `count` of them (or whatever came within `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.accepted) >= count:
                    break
            time.sleep(0.01)
        with self.lock:
            return list(self.accepted)


class FakeClock(Clock):
    """Retry schedule time that jumps ahead by whatever the sender waits for, so backoff costs no real time."""

    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t

    def wait(self, cond: threading.Condition, timeout: float | None) -> None:
        cond.wait(0.002)  # really yield, so the other threads (and a notify) get their turn
        if timeout is not None:
            self.t += timeout


@pytest.fixture
def ingest() -> Iterator[FakeIngest]:
    fake = FakeIngest().start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_sink(tmp_path: Path) -> Iterator[Callable[..., HttpSink]]:
    """`make_sink(fake, clock=None, **ShipConfig fields)`: an HttpSink with quick test timings; closed at the end."""
    sinks: list[HttpSink] = []

    def make(fake: FakeIngest, clock: Clock | None = None, spool: Path | None = None, **config: Any) -> HttpSink:
        config.setdefault("linger", 0.0)
        config.setdefault("backoff_base", 0.02)
        config.setdefault("backoff_cap", 0.1)
        config.setdefault("timeout", 5.0)
        config.setdefault("spool_poll", 0.05)
        sink = HttpSink(parse_dsn(fake.dsn), ShipConfig(spool_dir=spool or tmp_path / "spool", **config), clock=clock)
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.close(1.0)


def bundles(count: int, prefix: str = "bundle", size: int = 0) -> list[tuple[str, bytes]]:
    return [(f"{prefix}-{i:04d}", f"{prefix}-{i:04d}".encode() + b"." * size) for i in range(count)]


@pytest.fixture
def make_bundles() -> Callable[..., list[tuple[str, bytes]]]:
    """`make_bundles(n, prefix, size)`: (name, data) pairs whose data starts with the name, in order."""
    return bundles


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    return server_process.wait_until(predicate, timeout, interval=0.01)


@pytest.fixture
def until() -> Callable[..., Any]:
    """`until(predicate, timeout=10)`: poll until the predicate is true; its last value."""
    return wait_until
