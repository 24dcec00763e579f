"""Real uvicorn processes on loopback for integration tests."""

from __future__ import annotations

import itertools
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

APPS = Path(__file__).parent.parent / "integration" / "apps"


def free_port() -> int:
    """A loopback port nothing listens on, for a server a test is about to start.

    Not one the kernel hands out for port 0: an ephemeral port given back after the probe can be taken by any
    outgoing connection (the suite makes thousands on loopback) before the server binds it, and the server then
    fails with "address already in use". The port comes from below the ephemeral range instead, from a slice
    of it owned by this pytest-xdist worker, in turn from a random offset (another run on the same machine), so
    one process hands a port out again only after going round its slice; a port already held is skipped."""
    for _ in range(len(_OWN_PORTS)):
        port = next(_own_ports)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    with socket.socket() as sock:  # the whole slice is held: fall back to the kernel's choice
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _own_port_slice() -> range:
    """This worker's ports: below the ephemeral range, cut in 16 slices by xdist worker number."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    low = min(low, 32768)
    if low <= _FIRST_OWN_PORT + 1600:
        return range(0)  # no room below the ephemeral range: the kernel's choice only
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    size = (low - _FIRST_OWN_PORT) // 16
    start = _FIRST_OWN_PORT + (int(worker) % 16 if worker.isdigit() else 0) * size
    return range(start, start + size)


def _cycle_from_random_offset(ports: range) -> Iterator[int]:
    offset = random.SystemRandom().randrange(len(ports)) if ports else 0  # not the seeded global generator
    return itertools.cycle([*ports[offset:], *ports[:offset]])


_FIRST_OWN_PORT = 10000  # above the well-known and most registered service ports
_OWN_PORTS = _own_port_slice()
_own_ports = _cycle_from_random_offset(_OWN_PORTS)


@contextmanager
def uvicorn_process(app: str, env: dict[str, str] | None = None, app_dir: Path = APPS) -> Iterator[str]:
    """Start `uvicorn app` on a free loopback port; yield its base URL; stop it at the end."""
    with tempfile.TemporaryFile() as log:  # not a pipe: an unread pipe fills up and blocks the server
        yield from _run(app, env, app_dir, log)


def _run(app: str, env: dict[str, str] | None, app_dir: Path, log: Any) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", app, "--app-dir", str(app_dir), "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        env={**os.environ, **(env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                log.seek(0)
                output = log.read().decode(errors="replace")
                raise RuntimeError(f"{app} exited with {proc.returncode}:\n{output}")
            try:
                httpx.get(url + "/", timeout=0.5)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{app} did not start within 20 s") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
