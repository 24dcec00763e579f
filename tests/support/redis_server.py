"""A throwaway `redis-server` on a free loopback port (Debian's binary), for tests against a real Redis: a plain
server (`redis_server`) or a one-node Redis Cluster holding every slot (`redis_cluster`)."""

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
    with _started() as server:
        yield server


@contextmanager
def redis_cluster() -> Iterator[RedisServer]:
    """A one-node Redis Cluster: `redis-server --cluster-enabled yes` (its node table in the temporary folder, its
    cluster bus on a second free port), given all 16384 slots with `CLUSTER ADDSLOTSRANGE`; yielded once `CLUSTER
    INFO` says `cluster_state:ok`, so a `RedisCluster` client built then finds every slot covered."""
    with _started(cluster=True) as server:
        if not server.raw("CLUSTER", "ADDSLOTSRANGE", "0", "16383").startswith(b"+OK"):
            raise RuntimeError("redis-server did not take the slots")
        deadline = time.monotonic() + 15
        while b"cluster_state:ok" not in server.raw("CLUSTER", "INFO"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the one-node cluster is not ok after 15 s:\n{server.raw('CLUSTER', 'INFO')!r}")
            time.sleep(0.05)
        yield server


@contextmanager
def _started(*, cluster: bool = False) -> Iterator[RedisServer]:
    """`redis-server` on a free port (in cluster mode if asked); yielded once it answers PING."""
    # Debian's redis-server, installed when missing (as root with apt-get), else a message saying how to install it
    binary = ensure("redis-server", "redis-server")
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir, tempfile.TemporaryFile() as log:
        options = [] if not cluster else [
            "--cluster-enabled", "yes", "--cluster-config-file", f"{workdir}/nodes.conf",
            "--cluster-port", str(free_port()),
        ]  # fmt: skip
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", workdir, "--daemonize", "no", *options],
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
