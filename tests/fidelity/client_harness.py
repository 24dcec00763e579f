"""Helpers for the HTTP-client scenarios (requests, boto3 over urllib3, aiohttp) beside `harness`.

`harness` starts uvicorn apps and upstreams on a port of its choosing. These scenarios also need a WSGI app
under gunicorn, moto's own S3 server, and a service restarted *on the port the recording names*, so that a
replay that leaked would reach a live, counting server. `replay_offline_with_events` is `harness.replay_offline`
whose runs also report `result.events` (what replay served, in order), to show that replays are identical.

Run as a script, this module is the replay child: `replay_child.py`, with each run's served events added.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

FIDELITY = Path(__file__).parent
APPS = FIDELITY / "apps"
UPSTREAMS = FIDELITY / "upstreams"


@dataclass
class Process:
    """A server process on a loopback port, its output kept in a temporary file (never an unread pipe)."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: IO[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


def _listening(port: int) -> bool:
    """A TCP connect, not an HTTP request: a server that counts requests must not count readiness probes."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def server_process(name: str, argv: Sequence[str], port: int, env: dict[str, str] | None = None,
                   cwd: Path | None = None, timeout: float = 30) -> Iterator[Process]:  # fmt: skip
    """Run `argv` until it listens on `port`; yield it; terminate it (and wait until the port is free)."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            list(argv), env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT, cwd=cwd
        )
        process = Process(name, port, proc, log)
        try:
            deadline = time.monotonic() + timeout
            while not _listening(port):
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{process.output()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not listen on {port} within {timeout} s:\n{process.output()}")
                time.sleep(0.05)
            yield process
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            deadline = time.monotonic() + 10
            while _listening(port) and time.monotonic() < deadline:
                time.sleep(0.05)


def capture_env(keys: Any, capture_dir: Path, env: dict[str, str]) -> dict[str, str]:
    """The app process's environment: FluxRun's folder sink settings plus the app's own."""
    return {"FLUXRUN_CAPTURE_KEY": str(keys.capture), "FLUXRUN_DIR": str(capture_dir), **env}


@contextmanager
def gunicorn_app(module_app: str, port: int, env: dict[str, str]) -> Iterator[Process]:
    """A WSGI app (`module:app` in apps/) under gunicorn, one sync worker, as production runs Flask."""
    argv = [sys.executable, "-m", "gunicorn", module_app, "--chdir", str(APPS), "--bind", f"127.0.0.1:{port}",
            "--workers", "1", "--log-level", "warning"]  # fmt: skip
    with server_process(f"gunicorn {module_app}", argv, port, env) as process:
        yield process


@contextmanager
def uvicorn_on(module_app: str, port: int, app_dir: Path, env: dict[str, str] | None = None) -> Iterator[Process]:
    """`uvicorn module:app` on a given port (a restart keeps the port the recording names)."""
    argv = [sys.executable, "-m", "uvicorn", module_app, "--app-dir", str(app_dir), "--host", "127.0.0.1",
            "--port", str(port), "--log-level", "warning"]  # fmt: skip
    with server_process(f"uvicorn {module_app}", argv, port, env) as process:
        yield process


@contextmanager
def moto_s3(port: int) -> Iterator[Process]:
    """moto's own server (`python -m moto.server`), in memory, logging each request it answers."""
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with server_process("moto.server", argv, port, {"MOTO_PORT": str(port)}) as process:
        yield process


_ACCESS_LINE = re.compile(r'"(?:\x1b\[[0-9;]*m)?(GET|PUT|POST|HEAD|DELETE|PATCH|OPTIONS) /')  # 4xx lines are coloured


def requests_logged(process: Process) -> int:
    """How many requests moto's server answered, from its access log (werkzeug logs one line per request)."""
    time.sleep(0.2)  # the log line is written after the answer
    return len(_ACCESS_LINE.findall(process.output()))


def replay_offline_with_events(*args: Any, **kwargs: Any) -> Any:
    """`harness.replay_offline`, run by this module as the child: each run also has `events`, as served."""
    import harness

    original = harness.FIDELITY
    try:
        harness.FIDELITY = _ChildPath(FIDELITY)  # replay_offline runs FIDELITY / "replay_child.py"
        return harness.replay_offline(*args, **kwargs)
    finally:
        harness.FIDELITY = original


class _ChildPath(type(FIDELITY)):  # type: ignore[misc]
    """FIDELITY, except that `/ "replay_child.py"` names this module."""

    def __truediv__(self, name: Any) -> Any:
        if name == "replay_child.py":
            return Path(__file__)
        return Path(self) / name


def _child_main() -> None:
    """`replay_child.main`, with `fluxrun.replay.run` watched so each run reports the events replay served."""
    sys.path.insert(0, str(FIDELITY))
    import replay_child

    import fluxrun.replay
    from fluxrun.replay import ReplayExpectationError

    seen: list[Any] = []
    run = fluxrun.replay.run

    def watched_run(*args: Any, **kwargs: Any) -> Any:
        try:
            result = run(*args, **kwargs)
        except ReplayExpectationError as exc:
            seen.append(exc.result)
            raise
        seen.append(result)
        return result

    one_replay = replay_child.one_replay

    def one_replay_with_events(job: dict[str, Any]) -> dict[str, Any]:
        seen.clear()
        report = one_replay(job)
        if seen:
            report["events"] = [list(event) for event in seen[-1].events]
        return report

    fluxrun.replay.run = watched_run  # type: ignore[assignment]
    replay_child.one_replay = one_replay_with_events  # type: ignore[assignment]
    replay_child.main()


if __name__ == "__main__":
    _child_main()
