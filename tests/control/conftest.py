"""Fixtures for the control-plane tests: server processes on SQLite and on PostgreSQL (127.0.0.1:5432),
and signed bundles to ingest. The helpers they use are in control_helpers.py."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from control_helpers import PG_ADMIN, Server
from servers import free_port

from fluxrun.bundle import Sealer, load_capture_key


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
