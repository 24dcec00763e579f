"""A real HTTP upstream on loopback (stdlib http.server in a thread) for the HTTP client tests.

Routes: `/price` (JSON), `/charge` (POST, echoes the JSON body, 402 when the amount is over 1000),
`/stream` (chunked transfer, one line per chunk, flushed apart), `/hop` (a 302 to `/price`), `/slow-price`
(the headers at once, the JSON body 0.5 s later).
`hits` counts the requests it served, so a test can show that a replay reached nothing.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STREAM_LINES = [b'data: {"n": 1}\n', b'data: {"n": 2}\n', b"data: {}\n", b'data: {"n": 4}\n', b"data: [DONE]\n"]


class Upstream:
    def __init__(self, server: ThreadingHTTPServer) -> None:
        self.server = server
        self.hits = 0
        host, port = server.server_address[:2]
        self.url = f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(upstream_ref: list[Upstream]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def reply(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            upstream_ref[0].hits += 1
            if self.path.startswith("/price"):
                self.reply(200, {"price": 1200, "path": self.path}, {"set-cookie": "seen=1; Path=/"})
            elif self.path.startswith("/cookies"):  # one header name on two lines
                self.send_response(200)
                self.send_header("content-length", "2")
                self.send_header("Set-Cookie", "a=1; Path=/")
                self.send_header("Set-Cookie", "b=2; Path=/")
                self.end_headers()
                self.wfile.write(b"{}")
            elif self.path.startswith("/slow-price"):
                body = json.dumps({"price": 1200, "path": self.path}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.flush()
                time.sleep(0.5)
                with contextlib.suppress(OSError):  # the client went away meanwhile
                    self.wfile.write(body)
            elif self.path.startswith("/hop"):
                self.send_response(302)
                self.send_header("location", "/price?from=hop")
                self.send_header("content-length", "0")
                self.end_headers()
            elif self.path.startswith("/stream"):
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                for line in STREAM_LINES:
                    self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                    self.wfile.flush()
                    time.sleep(0.02)
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.reply(404, {"error": "no route"})

        def do_POST(self) -> None:
            upstream_ref[0].hits += 1
            length = int(self.headers.get("content-length") or 0)
            data = json.loads(self.rfile.read(length) or b"{}")
            if data.get("amount", 0) > 1000:
                self.reply(402, {"error": "card_declined", "echo": data})
            else:
                self.reply(200, {"charge": "ch_1", "echo": data})

    return Handler


@contextmanager
def http_upstream() -> Iterator[Upstream]:
    ref: list[Upstream] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(ref))
    upstream = Upstream(server)
    ref.append(upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield upstream
    finally:
        upstream.stop()
        thread.join(5)


def refused_url() -> str:
    """A loopback URL nothing listens on (a port bound then closed)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
