"""The demo's real processes (server, agent, shop) on loopback ports, each logging to its own file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from fluxrun.errors import FluxRunError

__all__ = ["Process", "clean_env", "free_port", "serve_in_thread", "start_on_free_port", "start_process"]


class PortTaken(FluxRunError):
    """The process could not listen: another process took its port between `free_port` and its bind."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment without the caller's own FLUXRUN_* settings (they would point the demo elsewhere)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXRUN_")}
    env.update(extra)
    return env


@dataclass
class Process:
    name: str
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    def log_tail(self, lines: int = 20) -> str:
        self.log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def start_process(
    name: str, args: list[str], *, port: int, health: str, env: dict[str, str], cwd: Path, logs: Path
) -> Process:
    """Start `python -m ARGS...` and wait until `health` answers 200; a clear error with its log if it does not."""
    import httpx

    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    log = log_path.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", *args], env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    process = Process(name, f"http://127.0.0.1:{port}", proc, log_path, log)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            tail = process.log_tail()
            process.stop()
            error = PortTaken if "address already in use" in tail.lower() else FluxRunError
            raise error(f"the demo's {name} exited with status {proc.returncode}; its log says:\n{tail}")
        try:
            if httpx.get(process.url + health, timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.stop()
            raise FluxRunError(f"the demo's {name} did not answer {health} within 60 s; see {log_path}")
        time.sleep(0.05)


def start_on_free_port(
    name: str,
    command: Callable[[int], tuple[list[str], dict[str, str]]],
    *,
    health: str,
    cwd: Path,
    logs: Path,
    attempts: int = 3,
) -> Process:
    """`start_process` on a free port: `command(port)` gives its arguments and environment. A free port is only
    free when it is looked at, so a process that finds it taken when it binds is started again on another."""
    for attempt in range(attempts):
        port = free_port()
        args, env = command(port)
        try:
            return start_process(name, args, port=port, health=health, env=env, cwd=cwd, logs=logs)
        except PortTaken:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port in a background thread of this process."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", lifespan="off"))
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise FluxRunError(f"the demo could not start a server on 127.0.0.1:{port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
