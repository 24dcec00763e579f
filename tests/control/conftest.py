"""Fixtures for the control-plane tests: server processes on SQLite and on PostgreSQL (a throwaway cluster),
and signed bundles to ingest. The helpers they use are in control_helpers.py."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from control_helpers import Server
from postgres import create_database, drop_database
from servers import free_port

from fluxrun.bundle import Sealer, load_capture_key


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
            url = create_database("fluxrun_control")
            databases.append(url)
            env["FLUXRUN_SERVER_DATABASE_URL"] = url
        server = Server(f"http://127.0.0.1:{port}", env, data_dir, backend)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()
    for url in databases:
        drop_database(url)


@pytest.fixture(scope="session")
def seal(keys: Any) -> Callable[..., tuple[str, bytes]]:
    """`seal(fingerprint=..., started_at=..., project=...)` -> (bundle_id, sealed bytes), signed with the test
    capture key, for acme/shop unless `project` names another."""
    capture = load_capture_key(keys.capture)
    sealers: dict[str, Sealer] = {}

    def make(
        *,
        fingerprint: str = "fp-keyerror",
        started_at: datetime | None = None,
        size: int = 0,
        project: str = "acme/shop",
        bundle_id: str | None = None,
    ) -> tuple[str, bytes]:
        sealer = sealers.setdefault(project, Sealer(capture, sdk="tests", project=project))
        bundle_id = bundle_id or secrets.token_hex(16)
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
