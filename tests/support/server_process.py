"""A real `fluxrun server` process on loopback for the tests: start, stop, restart, provision.

It runs the embedded default (SQLite + filesystem in `data_dir`); a restart keeps the data dir and the port.
`provision` creates the `acme/shop` project with the test signing key, an ingest token and an API key.
(Not named `fluxrun_server.py`: tests/support is on sys.path, and that name would shadow the server package.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

import httpx
from servers import free_port

from fluxrun.bundle import load_capture_key, signing_public_key

START_TIMEOUT_S = 60.0  # a busy 2-core CI machine can take a while to import FastAPI, SQLAlchemy and boto3


@dataclass
class ServerProcess:
    """A `fluxrun server` subprocess configured by `env`: admin CLI calls, start (until /healthz answers),
    stop (SIGTERM, or SIGKILL with `kill=True`), restart on the same data dir, and its captured output."""

    url: str
    env: dict[str, str]
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    log: IO[bytes] | None = field(default=None, init=False)
    started_statuses: ClassVar[tuple[int, ...]] = (200,)  # /healthz answers that mean the server is up

    def run_admin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "fluxrun.cli.app", "server", "admin", *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"admin {args} failed: {result.stdout}{result.stderr}")
        return result

    def start(self) -> None:
        if self.log is None:
            self.log = tempfile.TemporaryFile()  # noqa: SIM115 - kept open across restarts, closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fluxrun.cli.app", "server"],
            env={**os.environ, **self.env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code in self.started_statuses:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop(kill=True)  # not left running past the test that failed here
                raise RuntimeError(f"server did not start within {START_TIMEOUT_S:.0f} s:\n{self.output()}")
            time.sleep(0.05)

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self.log is not None:
            self.log.close()
            self.log = None

    def output(self) -> str:
        if self.log is None:
            return ""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


@dataclass
class FluxRunServer(ServerProcess):
    """The embedded default with the `acme/shop` project of `provision`."""

    port: int = 0
    tokens: dict[str, str] = field(default_factory=dict)

    def admin(self, *args: str) -> str:
        return self.run_admin(*args).stdout.strip()

    # -- for tests -------------------------------------------------------------------------------------
    @property
    def dsn(self) -> str:
        return f"http://{self.tokens['ingest']}@127.0.0.1:{self.port}/acme/shop"  # the path names the project

    def api(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(
            self.url + path,
            params=params or None,
            headers={"authorization": f"Bearer {self.tokens['api']}"},
            timeout=10,
        )

    def project_id(self) -> int:
        (project,) = [p for p in self.api("/v1/projects").json()["projects"] if p["name"] == "shop"]
        return int(project["id"])

    def runs(self) -> list[dict[str, Any]]:
        """Every run of acme/shop the query API lists, following the cursor."""
        runs: list[dict[str, Any]] = []
        cursor = None
        project = self.project_id()
        while True:
            page = self.api(f"/v1/projects/{project}/runs", limit=500, **({"cursor": cursor} if cursor else {}))
            page.raise_for_status()
            body = page.json()
            runs += body["runs"]
            cursor = body["next_cursor"]
            if not cursor:
                return runs


def provision(server: FluxRunServer, capture_key: Path) -> None:
    """Workspace `acme`, project `shop` with the signing key of `capture_key`, an ingest token, a CI token (for
    replay reports) and an API key."""
    server.admin("create-workspace", "acme")
    server.admin("create-project", "acme", "shop")
    key_id, public = signing_public_key(load_capture_key(capture_key))
    server.admin("add-key", "acme/shop", f"{key_id}:{public}")
    server.tokens["ingest"] = server.admin("create-token", "acme/shop")
    server.tokens["ci"] = server.admin("create-token", "acme/shop", "--ci")
    server.tokens["api"] = server.admin("create-api-key", "acme", "triager")


@contextmanager
def fluxrun_server(data_dir: Path, capture_key: Path, env: dict[str, str] | None = None) -> Iterator[FluxRunServer]:
    """A provisioned, running embedded server on a free loopback port; stopped at the end."""
    port = free_port()
    server = FluxRunServer(
        url=f"http://127.0.0.1:{port}",
        port=port,
        data_dir=data_dir,
        env={"FLUXRUN_SERVER_DATA_DIR": str(data_dir), "FLUXRUN_SERVER_PORT": str(port), **(env or {})},
    )
    provision(server, capture_key)
    server.start()
    try:
        yield server
    finally:
        server.close()


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    """`predicate()` once it is truthy, or its last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
