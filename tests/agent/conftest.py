"""Real processes for the agent tests: a `fluxrun server` (embedded default) provisioned with two
workspaces, and a `fluxrun agent` subprocess pinned to that server's grant key, holding the test replay key,
with this folder on PYTHONPATH so it can import the captured job (`fluxrun_agent_jobs`) to replay it.

Copied in spirit from tests/server/conftest.py (not imported: conftest modules are not a library).
"""

from __future__ import annotations

import base64
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
import orjson
import pytest
from servers import free_port

import fluxrun
from fluxrun.bundle import Sealer, generate_keys, load_capture_key, open_bundle, signing_public_key
from fluxrun.model.export import build_summary
from fluxrun.scrub import default_scrubber
from fluxrun_server.ingest.batch import encode_batch

HERE = Path(__file__).parent
DASHBOARD = "http://dashboard.test:5173"


@dataclass
class Server:
    url: str
    env: dict[str, str]
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    log: Any = None
    tokens: dict[str, str] = field(default_factory=dict)
    projects: dict[str, int] = field(default_factory=dict)

    def admin(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "fluxrun.cli.app", "server", "admin", *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"admin {args} failed: {result.stdout}{result.stderr}")
        return result.stdout.strip()

    def start(self) -> None:
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fluxrun.cli.app", "server"],
            env={**os.environ, **self.env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        _wait_for(self.proc, self.log, self.url + "/healthz", "server")

    def close(self) -> None:
        _stop(self.proc)
        self.proc = None

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def api(self, method: str, path: str, key: str = "admin", **kwargs: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.tokens[key]}"}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kwargs)

    def grant(self, bundle_id: str, action: str = "unlock", *, key: str = "admin", **extra: Any) -> httpx.Response:
        return self.api("POST", "/v1/grants", key, json={"bundle_id": bundle_id, "action": action, **extra})

    def ingest(self, bundle: bytes, token: str = "ingest") -> str:
        """Post one sealed bundle as the app's shipper would, and wait until the query API shows it."""
        response = httpx.post(
            f"{self.url}/v1/executions",
            content=encode_batch([bundle]),
            headers={"authorization": f"Bearer {self.tokens[token]}"},
            timeout=30,
        )
        assert response.status_code == 202, response.text
        [bundle_id] = response.json()["accepted"]
        key = "admin" if token == "ingest" else "other_api"
        deadline = time.monotonic() + 15
        while self.api("GET", f"/v1/runs/{bundle_id}", key).status_code != 200:
            assert time.monotonic() < deadline, f"run {bundle_id} never became visible"
            time.sleep(0.05)
        return str(bundle_id)

    def bundle(self, bundle_id: str, key: str = "admin") -> bytes:
        """What the dashboard fetches: the sealed bundle, still encrypted."""
        response = self.api("GET", f"/v1/runs/{bundle_id}/bundle", key)
        assert response.status_code == 200, response.text
        return response.content


@dataclass
class Agent:
    url: str
    audit_log: Path
    proc: subprocess.Popen[bytes] | None = None
    log: Any = None

    def post(self, action: str, grant: str, bundle: bytes, **kwargs: Any) -> httpx.Response:
        body = {"grant": grant, "bundle": base64.b64encode(bundle).decode()}
        return httpx.post(f"{self.url}/v1/{action}", json=body, timeout=60, **kwargs)

    def audit(self, nonce: str | None = None) -> list[dict[str, Any]]:
        entries = [orjson.loads(line) for line in self.audit_log.read_bytes().splitlines() if line.strip()]
        return [e for e in entries if nonce is None or e.get("nonce") == nonce]

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")


def _wait_for(proc: subprocess.Popen[bytes], log: Any, url: str, what: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read().decode(errors='replace')}")
        try:
            if httpx.get(url, timeout=1).status_code in (200, 503):
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within 30 s")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def other_capture_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """other/app's own capture key: a signing key active in one workspace cannot be registered in another."""
    return generate_keys(tmp_path_factory.mktemp("other-keys"))[0]


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, keys: Any, other_capture_key: Path) -> Iterator[Server]:
    """`acme/shop` (admin and member API keys, the test keys) and `other/app` (its own workspace and keys)."""
    data_dir = tmp_path_factory.mktemp("agent-server")
    port = free_port()
    srv = Server(
        f"http://127.0.0.1:{port}",
        {"FLUXRUN_SERVER_DATA_DIR": str(data_dir), "FLUXRUN_SERVER_PORT": str(port)},
        data_dir,
    )
    srv.admin("create-workspace", "acme")
    srv.admin("create-project", "acme", "shop")
    srv.admin("create-workspace", "other")
    srv.admin("create-project", "other", "app")
    key_id, public = signing_public_key(load_capture_key(keys.capture))
    srv.admin("add-key", "acme/shop", f"{key_id}:{public}")
    other_id, other_public = signing_public_key(load_capture_key(other_capture_key))
    srv.admin("add-key", "other/app", f"{other_id}:{other_public}")
    srv.tokens["ingest"] = srv.admin("create-token", "acme/shop")
    srv.tokens["other_ingest"] = srv.admin("create-token", "other/app")
    srv.tokens["admin"] = srv.admin("create-api-key", "acme", "lead", "--role", "admin")
    srv.tokens["member"] = srv.admin("create-api-key", "acme", "triager", "--role", "member")
    srv.tokens["other_api"] = srv.admin("create-api-key", "other", "someone", "--role", "owner")
    srv.start()
    try:
        for key, name in (("admin", "shop"), ("other_api", "app")):
            [project] = srv.api("GET", "/v1/projects", key).json()["projects"]
            assert project["name"] == name
            srv.projects[name] = project["id"]
        yield srv
    finally:
        srv.close()
        srv.log.close()


@pytest.fixture(scope="session")
def pinned_grant_key(server: Server) -> str:
    """What an operator copies from GET /v1/grant-key into FLUXRUN_AGENT_GRANT_KEY."""
    document = httpx.get(f"{server.url}/v1/grant-key", timeout=10).json()
    return f"{document['key_id']}:{document['public_key']}"


@pytest.fixture(scope="session")
def agent(
    server: Server, keys: Any, pinned_grant_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Agent]:
    """`fluxrun agent` as a real process on loopback, serving acme/shop, CORS open to DASHBOARD only."""
    workdir = tmp_path_factory.mktemp("agent")
    port = free_port()
    audit_log = workdir / "audit" / "agent.jsonl"
    env = {
        **os.environ,
        "FLUXRUN_REPLAY_KEY": str(keys.replay),
        "FLUXRUN_AGENT_GRANT_KEY": pinned_grant_key,
        "FLUXRUN_AGENT_PROJECT": str(server.projects["shop"]),
        "FLUXRUN_AGENT_ORIGIN": DASHBOARD,
        "FLUXRUN_AGENT_AUDIT_LOG": str(audit_log),
        "PYTHONPATH": os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    for name in ("FLUXRUN_CAPTURE_KEY", "FLUXRUN_AGENT_SERVER"):
        env.pop(name, None)
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "fluxrun.cli.app", "agent", "--port", str(port)],
        env=env,
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    running = Agent(f"http://127.0.0.1:{port}", audit_log, proc, log)
    try:
        _wait_for(proc, log, running.url + "/v1/health", "agent")
        yield running
    finally:
        _stop(proc)
        log.close()


# --- bundles --------------------------------------------------------------------------------------------


def web_payload(bundle_id: str, marker: str) -> dict[str, Any]:
    """A payload shaped like an ASGI capture, with credentials in the places the agent must mask."""
    body = orjson.dumps({"user": "al", "password": "hunter2-body", "note": marker}).decode()
    return {
        "format": 1,
        "bundle_id": bundle_id,
        "execution": "asgi",
        "entry": "shop:app",
        "started_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "request": {
            "method": "POST",
            "path": "/login",
            "query_string": "next=%2Fhome&session=sess-42",
            "scheme": "http",
            "http_version": "1.1",
            "headers": [
                ["host", "shop.test"],
                ["authorization", "Bearer tok-live-authorization-9f8e7d"],
                ["cookie", "sid=cookie-value-1"],
                ["content-type", "application/json"],
            ],
            "route": "/login",
            "body": {"size": len(body), "text": body},
        },
        "events": [
            {
                "seq": 0,
                "kind": "http",
                "call": "POST https://auth.test/token?api_key=key-in-url-123",
                "task": "0",
                "site": "shop:login:12",
                "start_ns": 1000,
                "dur_ns": 2000,
                "data": {
                    "client": "httpx",
                    "request": {
                        "method": "POST",
                        "url": "https://auth.test/token?api_key=key-in-url-123",
                        "headers": [["Authorization", "Bearer upstream-secret-1"]],
                        "body": {"size": 2, "text": "{}"},
                    },
                    "response": {
                        "status": 200,
                        "headers": [["content-type", "application/json"]],
                        "body": {"size": 30, "text": '{"access_token": "at-upstream-2"}'},
                    },
                },
            },
            {
                "seq": 1,
                "kind": "env",
                "call": "env SHOP_DB_PASSWORD",
                "task": "0",
                "site": "shop:login:13",
                "start_ns": 4000,
                "dur_ns": 0,
                "data": {"key": "SHOP_DB_PASSWORD", "present": True, "value": "env-secret-3"},
            },
            {
                "seq": 2,
                "kind": "log",
                "call": "WARNING shop",
                "task": "0",
                "site": "shop:login:14",
                "start_ns": 5000,
                "dur_ns": 0,
                "data": {"logger": "shop", "level": "WARNING", "message": f"login for al ({marker})"},
            },
        ],
        "outcome": {
            "kind": "error",
            "status": 500,
            "error": {"type": "builtins:KeyError", "message": "'price'", "frames": [], "fingerprint": "fp-agent"},
        },
        "sdk": {"name": "tests", "version": "0"},
        "release": "1.0.0",
        "environment": "test",
    }


@pytest.fixture(scope="session")
def sealer(keys: Any) -> Sealer:
    return Sealer(load_capture_key(keys.capture), sdk="tests", project="acme/shop")


@pytest.fixture(scope="session")
def other_sealer(other_capture_key: Path) -> Sealer:
    return Sealer(load_capture_key(other_capture_key), sdk="tests", project="other/app")


@pytest.fixture(scope="session")
def seal_payload(sealer: Sealer, other_sealer: Sealer) -> Callable[..., bytes]:
    """Seal a payload as the app would: summary built and scrubbed by the library, payload encrypted
    (for acme/shop, or for other/app with `other=True`)."""

    def make(payload: dict[str, Any], other: bool = False) -> bytes:
        summary = build_summary(payload, scrubber=default_scrubber(), duration_ns=1_000_000)
        chosen = other_sealer if other else sealer
        return chosen.seal(summary=summary, payload=payload, bundle_id=payload["bundle_id"])

    return make


@pytest.fixture
def web_run(server: Server, seal_payload: Callable[..., bytes]) -> Callable[..., tuple[str, str]]:
    """`web_run()` -> (bundle_id, marker): a fresh web-shaped bundle ingested into acme/shop (or other/app)."""

    def make(token: str = "ingest") -> tuple[str, str]:
        bundle_id = secrets.token_hex(16)
        marker = f"PLAINTEXT-MARKER-{secrets.token_hex(8)}"
        server.ingest(seal_payload(web_payload(bundle_id, marker), other=token == "other_ingest"), token)
        return bundle_id, marker

    return make


@pytest.fixture(scope="session")
def captured_failure(keys: Any, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real capture of `fluxrun_agent_jobs.charge` failing with KeyError: the bundle file's bytes."""
    sys.path.insert(0, str(HERE))
    import fluxrun_agent_jobs

    directory = tmp_path_factory.mktemp("captured")
    os.environ["SHOP_DB_PASSWORD"] = "env-secret-for-capture"
    fluxrun.init(directory=directory, capture_key=keys.capture)
    try:
        with pytest.raises(KeyError):
            fluxrun_agent_jobs.charge(7, 100)
        assert fluxrun.flush(5.0)
    finally:
        fluxrun.shutdown()
        os.environ.pop("SHOP_DB_PASSWORD", None)
    [path] = directory.glob("*.fluxrun")
    return sealed_for_acme_shop(path.read_bytes(), keys)


@pytest.fixture(scope="session")
def for_acme_shop(keys: Any) -> Callable[[bytes], bytes]:
    """`for_acme_shop(folder_bundle)`: `sealed_for_acme_shop` for tests that capture to a folder."""
    return lambda data: sealed_for_acme_shop(data, keys)


def sealed_for_acme_shop(data: bytes, keys: Any) -> bytes:
    """A capture written to a folder (no DSN) names no project, so no server accepts it: the same capture
    sealed again for acme/shop, as an app with FLUXRUN_DSN=https://TOKEN@host/acme/shop seals it."""
    opened = open_bundle(data, keys.replay_key)
    sealer = Sealer(load_capture_key(keys.capture), sdk="tests", project="acme/shop")
    return sealer.seal(summary=opened.summary, payload=opened.payload, bundle_id=opened.sealed.bundle_id)
