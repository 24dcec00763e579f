"""Real server processes for the server tests: `fluxrun server` under uvicorn on loopback, on the
embedded default (SQLite + filesystem) and on PostgreSQL (a throwaway cluster, tests/support/postgres.py) + S3
(moto in server mode)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from postgres import create_database, drop_database
from server_process import ServerProcess
from servers import free_port

from fluxrun.bundle import load_capture_key, signing_public_key


@dataclass
class Server(ServerProcess):
    backend: str = "embedded"
    tokens: dict[str, str] = field(default_factory=dict)
    # A node whose WAL failed an fsync reports itself unhealthy (503) and still serves: the fault tests restart it so.
    started_statuses: ClassVar[tuple[int, ...]] = (200, 503)

    def admin(self, *args: str) -> str:
        return self.run_admin(*args).stdout.strip()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def new_database(request: pytest.FixtureRequest) -> str:
    """A fresh, empty database for one server (dropped when `request`'s fixture ends): each module's server
    provisions its own workspaces, so two servers must never share one."""
    url = create_database()
    request.addfinalizer(lambda: drop_database(url))
    return url


def _server_env(backend: str, data_dir: Path, port: int, request: pytest.FixtureRequest) -> dict[str, str]:
    env = {
        "FLUXRUN_SERVER_DATA_DIR": str(data_dir),
        "FLUXRUN_SERVER_PORT": str(port),
        "FLUXRUN_SERVER_MAX_BATCH_BYTES": str(2 * 1024 * 1024),
        "FLUXRUN_SERVER_MAX_DECOMPRESSED_BYTES": str(4 * 1024 * 1024),
        "FLUXRUN_SERVER_MAX_BUNDLE_BYTES": str(1024 * 1024),
    }
    if backend == "postgres-s3":
        bucket = f"fluxrun-{secrets.token_hex(4)}"
        endpoint = request.getfixturevalue("moto_endpoint")
        import boto3

        boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
        ).create_bucket(Bucket=bucket)
        env.update(
            FLUXRUN_SERVER_DATABASE_URL=new_database(request),
            FLUXRUN_SERVER_OBJECT_STORE_URL=f"s3://{bucket}/bundles",
            FLUXRUN_SERVER_S3_ENDPOINT_URL=endpoint,
            FLUXRUN_SERVER_S3_REGION="us-east-1",
            FLUXRUN_SERVER_S3_ACCESS_KEY="test",
            FLUXRUN_SERVER_S3_SECRET_KEY="test",
            AWS_EC2_METADATA_DISABLED="true",
        )
    return env


@pytest.fixture(scope="module", params=["embedded", "postgres-s3"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, keys: Any) -> Iterator[Server]:
    """A running server with two workspaces: `acme/shop` (with keys, a token and an API key) and `other/app`."""
    backend = request.param
    data_dir = tmp_path_factory.mktemp(f"server-{backend}")
    port = free_port()
    srv = Server(f"http://127.0.0.1:{port}", _server_env(backend, data_dir, port, request), data_dir, backend)
    srv.admin("create-workspace", "acme")
    srv.admin("create-project", "acme", "shop")
    srv.admin("create-workspace", "other")
    srv.admin("create-project", "other", "app")
    key_id, public = signing_public_key(load_capture_key(keys.capture))
    srv.admin("add-key", "acme/shop", f"{key_id}:{public}")
    srv.tokens["ingest"] = srv.admin("create-token", "acme/shop")
    srv.tokens["ci"] = srv.admin("create-token", "acme/shop", "--ci")
    srv.tokens["other_ingest"] = srv.admin("create-token", "other/app")
    srv.tokens["other_ci"] = srv.admin("create-token", "other/app", "--ci")
    srv.tokens["api"] = srv.admin("create-api-key", "acme", "triager")
    srv.tokens["other_api"] = srv.admin("create-api-key", "other", "someone")
    srv.tokens["viewer"] = srv.admin("create-api-key", "acme", "watcher", "--role", "viewer")
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="session")
def seal(keys: Any) -> Any:
    """`seal(route=..., error_type=..., fingerprint=...)` -> (bundle_id, bytes), signed with the test keys, for
    acme/shop (`project=` names another, `capture=` another capture key file)."""
    from datetime import UTC, datetime

    from fluxrun.bundle import Sealer

    sealers: dict[tuple[str, str], Sealer] = {}

    def make(
        *,
        route: str = "/orders/{order_id}",
        error_type: str | None = "builtins:KeyError",
        message: str = "'price'",
        fingerprint: str | None = "fp-keyerror-price",
        status: int = 500,
        release: str = "1.0.0",
        started_at: datetime | None = None,
        bundle_id: str | None = None,
        body_size: int = 0,
        project: str = "acme/shop",
        capture: Any = None,
    ) -> tuple[str, bytes]:
        key_file = str(capture or keys.capture)
        sealer = sealers.get((key_file, project))
        if sealer is None:
            sealer = sealers[(key_file, project)] = Sealer(load_capture_key(key_file), sdk="tests", project=project)
        bundle_id = bundle_id or secrets.token_hex(16)
        started = (started_at or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
        summary = {
            "bundle_id": bundle_id,
            "execution": "asgi",
            "entry": "shop:app",
            "started_at": started,
            "duration_ms": 12.5,
            "route": route,
            "method": "GET",
            "path": "/orders/7",
            "status": status,
            "outcome": "error" if error_type else "http_5xx",
            "error": {"type": error_type, "message": message} if error_type else None,
            "fingerprint": fingerprint if error_type else None,
            "request_id": bundle_id[:8],
            "trace_id": None,
            "events": [
                {
                    "seq": 0,
                    "kind": "http",
                    "label": "GET https://pricing.test/price/sku-7",
                    "task": "0",
                    "start_ms": 1.0,
                    "dur_ms": 3.5,
                    "status": 200,
                },
                {"seq": 1, "kind": "env", "label": "env SHOP_CURRENCY", "task": "0", "start_ms": 0.2, "dur_ms": 0.0},
            ],
            "counts": {"http": 1, "env": 1},
            "sdk": {"name": "tests", "version": "0"},
            "release": release,
            "environment": "test",
        }
        filler = secrets.token_urlsafe(body_size) if body_size else ""  # incompressible, so the bundle is big
        payload = {"format": 1, "bundle_id": bundle_id, "events": [], "secret": filler + "PLAINTEXT-MARKER"}
        return bundle_id, sealer.seal(summary=summary, payload=payload, bundle_id=bundle_id)

    return make
