"""Scale-out fixtures: a NATS JetStream cluster, PostgreSQL (a throwaway cluster's database), S3 (moto's server),
and `fluxrun server` edge nodes and `fluxrun server aggregate` processes configured against them."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from postgres import create_database, drop_database
from server_process import ServerProcess
from servers import free_port

from fluxrun.bundle import Sealer, load_capture_key, signing_public_key


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def shared_env(log_url: str, moto_endpoint: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The settings every node of one deployment shares: the log, a fresh database and a fresh bucket."""
    import boto3

    bucket = f"fluxrun-{secrets.token_hex(4)}"
    boto3.client(
        "s3", endpoint_url=moto_endpoint, aws_access_key_id="t", aws_secret_access_key="t", region_name="us-east-1"
    ).create_bucket(Bucket=bucket)
    database = create_database("fluxrun_scale")
    request.addfinalizer(lambda: drop_database(database))
    return {
        "FLUXRUN_SERVER_LOG_URL": log_url,
        "FLUXRUN_SERVER_DATABASE_URL": database,
        "FLUXRUN_SERVER_OBJECT_STORE_URL": f"s3://{bucket}/bundles",
        "FLUXRUN_SERVER_S3_ENDPOINT_URL": moto_endpoint,
        "FLUXRUN_SERVER_S3_REGION": "us-east-1",
        "FLUXRUN_SERVER_S3_ACCESS_KEY": "t",
        "FLUXRUN_SERVER_S3_SECRET_KEY": "t",
        "AWS_EC2_METADATA_DISABLED": "true",
        "FLUXRUN_CONTROL_USAGE_FLUSH_INTERVAL_S": "0.5",
        "FLUXRUN_CONTROL_ALERT_SCAN_INTERVAL_S": "0.5",
        "FLUXRUN_CONTROL_WEBHOOK_ALLOW_PRIVATE": "true",  # the test's webhook sink listens on loopback
    }


START_TIMEOUT_S = 120.0  # several Python servers importing at once on a busy 2-core machine


@dataclass
class Edge(ServerProcess):
    """A `fluxrun server` node (edge and query) of the deployment."""

    def admin(self, *args: str) -> str:
        return self.run_admin(*args).stdout.strip()

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start, and wait for /healthz (longer than a lone server gets: several nodes start at once here)."""
        self.log = self.log or tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fluxrun.cli.app", "server"],
            env={**os.environ, **self.env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"edge exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"edge did not start within {timeout} s:\n{self.output()}")
            time.sleep(0.1)


@dataclass
class AggregatorNode:
    """A `fluxrun server aggregate` process."""

    env: dict[str, str]
    ack_wait_s: float = 3.0
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log = self.log or tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fluxrun.cli.app", "server", "aggregate", "--ack-wait", str(self.ack_wait_s)],
            env={**os.environ, **self.env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while b"pulling from the log" not in self.output().encode():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the aggregator did not start:\n{self.output()}")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self.log is not None:
            self.log.close()
            self.log = None

    def output(self) -> str:
        if self.log is None:
            return ""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


@dataclass
class Deployment:
    env: dict[str, str]
    root: Path
    edges: list[Edge] = field(default_factory=list)
    aggregators: list[AggregatorNode] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)

    def add_edge(self) -> Edge:
        port = free_port()
        data_dir = self.root / f"edge{len(self.edges)}"
        env = {**self.env, "FLUXRUN_SERVER_DATA_DIR": str(data_dir), "FLUXRUN_SERVER_PORT": str(port)}
        edge = Edge(f"http://127.0.0.1:{port}", env, data_dir)
        self.edges.append(edge)
        return edge

    def add_aggregator(self, ack_wait_s: float = 3.0) -> AggregatorNode:
        env = {**self.env, "FLUXRUN_SERVER_DATA_DIR": str(self.root / f"aggregator{len(self.aggregators)}")}
        node = AggregatorNode(env, ack_wait_s)
        self.aggregators.append(node)
        return node

    def admin(self, *args: str) -> str:
        return (self.edges[0] if self.edges else self.add_edge()).admin(*args)

    def stop(self) -> None:
        for node in self.aggregators:
            node.stop()
        for edge in self.edges:
            edge.close()


@pytest.fixture
def deployment_factory(
    tmp_path: Path, moto_endpoint: str, request: pytest.FixtureRequest
) -> Iterator[Callable[[str], Deployment]]:
    made: list[Deployment] = []

    def make(log_url: str) -> Deployment:
        deployment = Deployment(shared_env(log_url, moto_endpoint, request), tmp_path / f"d{len(made)}")
        made.append(deployment)
        return deployment

    yield make
    for deployment in made:
        deployment.stop()


def provision(deployment: Deployment, keys: Any, webhook: str | None = None) -> None:
    """acme/shop (signing key, ingest tokens, API keys), and acme/metered on a plan with a daily quota of 300.

    In this process, through the same operations as `fluxrun server admin` (a CLI process per step would
    take most of the test's time on a busy machine)."""
    from sqlmodel import Session

    from fluxrun_server import admin
    from fluxrun_server.control import ops
    from fluxrun_server.index.database import make_engine, migrate

    engine = make_engine(deployment.env["FLUXRUN_SERVER_DATABASE_URL"])
    try:
        migrate(engine)
        with Session(engine) as session:
            admin.create_workspace(session, "acme")
            key_id, public = signing_public_key(load_capture_key(keys.capture))
            for project in ("shop", "metered"):
                admin.create_project(session, "acme", project)
                admin.register_key(session, f"acme/{project}", f"{key_id}:{public}")
            tokens = deployment.tokens
            tokens["shop"] = admin.issue_token(session, "acme/shop").secret
            tokens["doomed"] = admin.issue_token(session, "acme/shop").secret
            tokens["metered"] = admin.issue_token(session, "acme/metered").secret
            tokens["api"] = admin.create_api_key(session, "acme", "triager").secret
            tokens["admin"] = admin.create_api_key(session, "acme", "ops", "admin").secret
            operator = ops.Actor.operator()
            ops.create_plan(session, operator, "small", bundles_per_day=300)
            ops.set_project_plan(session, operator, admin.project_id(session, "acme/metered"), "small")
            if webhook is not None:  # a new-issue alert of acme/shop, to a sink on loopback
                shop = admin.project_id(session, "acme/shop")
                allowed = {"FLUXRUN_CONTROL_WEBHOOK_ALLOW_PRIVATE": "true"}  # as the nodes have it
                with pytest.MonkeyPatch.context() as patch:
                    for name, value in allowed.items():
                        patch.setenv(name, value)
                    ops.create_alert_rule(session, operator, shop, "new_issue", "webhook", webhook)
    finally:
        engine.dispose()


def make_sealer(keys: Any, project: str = "acme/shop") -> Callable[[int], tuple[str, bytes]]:
    """`seal(size)` -> (bundle id, sealed bundle of about `size` payload bytes), signed with the test key."""
    sealer = Sealer(load_capture_key(keys.capture), sdk="scale-tests", project=project)

    def seal(size: int = 2048) -> tuple[str, bytes]:
        bundle_id = secrets.token_hex(16)
        summary = {
            "bundle_id": bundle_id,
            "execution": "asgi",
            "started_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "route": f"/orders/{{id}}/{secrets.randbelow(8)}",
            "method": "GET",
            "status": 500,
            "outcome": "error",
            "error": {"type": "builtins:KeyError", "message": "'price'"},
            "fingerprint": f"fp-{secrets.randbelow(8)}",
            "events": [],
        }
        payload = {"format": 1, "bundle_id": bundle_id, "filler": secrets.token_urlsafe(size)}
        return bundle_id, sealer.seal(summary=summary, payload=payload, bundle_id=bundle_id)

    return seal


class WebhookSink:
    """An HTTP server on loopback that keeps every webhook body it is sent."""

    def __init__(self) -> None:
        import json
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook_sink() -> Iterator[WebhookSink]:
    sink = WebhookSink()
    yield sink
    sink.close()


def api_get(edge: Edge, token: str, path: str, **params: Any) -> httpx.Response:
    return httpx.get(edge.url + path, params=params or None, headers={"authorization": f"Bearer {token}"}, timeout=10)
