"""A throwaway `redis-server` on a free loopback port (Debian's binary), for tests against a real Redis."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from servers import free_port
from system_packages import ensure


@dataclass
class RedisServer:
    host: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def command_stats(self) -> dict[str, int]:
        """`INFO commandstats` as {command: calls}, read over a raw socket (no client library, never intercepted)."""
        reply = self.raw("INFO", "commandstats").decode()
        stats: dict[str, int] = {}
        for line in reply.splitlines():
            if line.startswith("cmdstat_"):
                name, _, fields = line.partition(":")
                calls = dict(f.split("=", 1) for f in fields.split(","))["calls"]
                stats[name.removeprefix("cmdstat_")] = int(calls)
        return stats

    def raw(self, *args: str) -> bytes:
        """One command in RESP over a fresh connection; the reply's bytes (bulk strings unwrapped)."""
        request = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        with socket.create_connection((self.host, self.port), timeout=5) as sock:
            sock.sendall(request.encode())
            data = b""
            while True:
                chunk = sock.recv(65536)
                data += chunk
                if not chunk or _complete(data):
                    break
        if data.startswith(b"$"):
            header, _, rest = data.partition(b"\r\n")
            return rest[: int(header[1:])] if int(header[1:]) >= 0 else b""
        return data

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _complete(data: bytes) -> bool:
    if data.startswith(b"$"):
        header, _, rest = data.partition(b"\r\n")
        size = int(header[1:])
        return size < 0 or len(rest) >= size + 2
    return data.endswith(b"\r\n")


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    """Start `redis-server --port N --save '' --appendonly no`; yield it once it answers PING; stop it at the end."""
    # Debian's redis-server, installed when missing (as root with apt-get), else a message saying how to install it
    binary = ensure("redis-server", "redis-server")
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir, tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", workdir, "--daemonize", "no"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        server = RedisServer("127.0.0.1", port, process)
        try:
            deadline = time.monotonic() + 15
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"redis-server exited with {process.returncode}:\n{log.read().decode()}")
                try:
                    if server.raw("PING").startswith(b"+PONG"):
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not answer PING within 15 s")
                time.sleep(0.05)
            yield server
        finally:
            server.stop()
