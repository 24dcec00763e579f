"""Real server processes for the control-plane tests, on SQLite and on PostgreSQL (127.0.0.1:5432), with a
GraphQL client per API key, the admin CLI, and signed bundles to ingest."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from servers import free_port

from fluxrun.bundle import Sealer, load_capture_key, signing_public_key

PG_ADMIN = os.environ.get("FLUXRUN_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", "postgres"]


class GraphQLFailed(AssertionError):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors[0]["message"])
        self.errors = errors
        self.code = (errors[0].get("extensions") or {}).get("code")


@dataclass
class Server:
    url: str
    env: dict[str, str]
    data_dir: Path
    backend: str
    proc: subprocess.Popen[bytes] | None = None
    log: Any = None
    keys: dict[str, str] = field(default_factory=dict)

    def admin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
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

    def out(self, *args: str) -> str:
        return self.admin(*args).stdout.strip()

    def start(self) -> None:
        if self.log is None:
            self.log = tempfile.TemporaryFile()  # noqa: SIM115 - kept open across restarts, closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fluxrun.cli.app", "server"],
            env={**os.environ, **self.env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start within 30 s:\n{self.output()}")
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

    # -- clients ---------------------------------------------------------------------------------------------

    def gql(self, key: str, query: str, **variables: Any) -> dict[str, Any]:
        """Run a GraphQL operation with the API key named `key` (or a raw key); raise GraphQLFailed on errors."""
        token = self.keys.get(key, key)
        response = httpx.post(
            self.url + "/v1/graphql",
            json={"query": query, "variables": variables},
            headers={"authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        if body.get("errors"):
            raise GraphQLFailed(body["errors"])
        data: dict[str, Any] = body["data"]
        return data

    def ingest(self, token: str, bundles: list[bytes], timeout: float = 30) -> httpx.Response:
        return httpx.post(
            self.url + "/v1/executions",
            content=b"".join(len(b).to_bytes(4, "big") + b for b in bundles),
            headers={"authorization": f"Bearer {token}", "content-type": "application/x-fluxrun-batch"},
            timeout=timeout,
        )

    def api(self, key: str, path: str, **params: Any) -> httpx.Response:
        return httpx.get(
            self.url + path,
            params=params or None,
            headers={"authorization": f"Bearer {self.keys.get(key, key)}"},
            timeout=30,
        )


@pytest.fixture(scope="session")
def postgres_admin() -> str:
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5):
            pass
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {PG_ADMIN} is required for the control-plane tests (.ci/run starts it): {exc}")
    return PG_ADMIN


@pytest.fixture(scope="module")
def make_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Server]]:
    """`make_server(backend, **control_env)` -> a configured, not yet started server; closed at the end."""
    made: list[Server] = []
    databases: list[str] = []

    def make(backend: str, **control: str) -> Server:
        data_dir = tmp_path_factory.mktemp(f"control-{backend}")
        port = free_port()
        env = {
            "FLUXRUN_SERVER_DATA_DIR": str(data_dir),
            "FLUXRUN_SERVER_PORT": str(port),
            "FLUXRUN_CONTROL_USAGE_FLUSH_INTERVAL_S": "0.2",
            "FLUXRUN_CONTROL_ALERT_SCAN_INTERVAL_S": "0.2",
            "FLUXRUN_CONTROL_ALERT_RETRY_BASE_S": "0.2",
            **{f"FLUXRUN_CONTROL_{k.upper()}": v for k, v in control.items()},
        }
        if backend == "postgres":
            admin_url = request.getfixturevalue("postgres_admin")
            name = f"fluxrun_control_{secrets.token_hex(4)}"
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            databases.append(name)
            env["FLUXRUN_SERVER_DATABASE_URL"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        server = Server(f"http://127.0.0.1:{port}", env, data_dir, backend)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()
    for name in databases:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def provision(server: Server, capture_key: Path) -> None:
    """acme/shop (signed, with an ingest token) and acme/web; other/app; an API key per role in acme, one in other.

    Done in-process through `fluxrun_server.admin` (the CLI's functions) on the server's database: quicker than
    a CLI process per step; tests/control/test_cli.py runs the CLI itself."""
    from sqlmodel import Session

    from fluxrun_server import admin
    from fluxrun_server.index.database import make_engine, migrate
    from fluxrun_server.settings import ServerSettings

    settings = ServerSettings(data_dir=server.data_dir, database_url=server.env.get("FLUXRUN_SERVER_DATABASE_URL"))
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    key_id, public = signing_public_key(load_capture_key(capture_key))
    with Session(engine) as session:
        admin.create_workspace(session, "acme")
        admin.create_project(session, "acme", "shop")
        admin.create_project(session, "acme", "web")
        admin.create_workspace(session, "other")
        admin.create_project(session, "other", "app")
        for project in ("acme/shop", "acme/web", "other/app"):
            admin.register_key(session, project, f"{key_id}:{public}")
        server.keys["ingest"] = admin.issue_token(session, "acme/shop").secret
        server.keys["ingest_web"] = admin.issue_token(session, "acme/web").secret
        server.keys["ingest_other"] = admin.issue_token(session, "other/app").secret
        for role in ("owner", "admin", "member", "viewer"):
            server.keys[role] = admin.create_api_key(session, "acme", f"{role}-key", role).secret
        server.keys["other_owner"] = admin.create_api_key(session, "other", "their-owner", "owner").secret
    engine.dispose()


def project_ids(server: Server) -> dict[str, int]:
    data = server.gql("owner", "{ projects { id name } }")
    return {p["name"]: p["id"] for p in data["projects"]}


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


@pytest.fixture(scope="session")
def seal(keys: Any) -> Callable[..., tuple[str, bytes]]:
    """`seal(fingerprint=..., started_at=...)` -> (bundle_id, sealed bytes), signed with the test capture key."""
    sealer = Sealer(load_capture_key(keys.capture), sdk="tests")

    def make(
        *, fingerprint: str = "fp-keyerror", started_at: datetime | None = None, size: int = 0
    ) -> tuple[str, bytes]:
        bundle_id = secrets.token_hex(16)
        started = (started_at or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
        summary = {
            "bundle_id": bundle_id,
            "execution": "asgi",
            "entry": "shop:app",
            "started_at": started,
            "duration_ms": 3.0,
            "route": "/orders/{order_id}",
            "method": "GET",
            "path": "/orders/7",
            "status": 500,
            "outcome": "error",
            "error": {"type": "builtins:KeyError", "message": f"'{fingerprint}'"},
            "fingerprint": fingerprint,
            "request_id": bundle_id[:8],
            "trace_id": None,
            "events": [],
            "counts": {},
            "sdk": {"name": "tests", "version": "0"},
            "release": "1.0.0",
            "environment": "test",
        }
        payload = {
            "format": 1,
            "bundle_id": bundle_id,
            "events": [],
            "pad": secrets.token_urlsafe(size) if size else "",
        }
        return bundle_id, sealer.seal(summary=summary, payload=payload, bundle_id=bundle_id)

    return make
