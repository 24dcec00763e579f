"""A real `fluxrun server` and a real `fluxrun agent` on loopback, seeded with failures, and Debian's
Chromium driven by Playwright. The agent's CORS origin is the server's own origin, where the dashboard
is served, exactly as an operator would configure it.

Chromium is Debian's /usr/bin/chromium; the tests install the `chromium` package when it is missing (as root,
through tests/support/system_packages.py). When it cannot be installed these tests fail and say so: a browser
suite that skips silently proves nothing.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from server_process import FluxRunServer, fluxrun_server
from servers import free_port
from system_packages import ensure

import fluxrun
from fluxrun.bundle import Sealer, load_capture_key, open_bundle
from fluxrun.model.export import build_summary
from fluxrun.scrub import default_scrubber
from fluxrun_server.ingest.batch import encode_batch

HERE = Path(__file__).parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
REPO = HERE.parent.parent


@dataclass
class Agent:
    url: str
    port: int
    env: dict[str, str]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    log: Any = None

    def start(self) -> None:
        self.log = self.log or tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fluxrun.cli.app", "agent", "--port", str(self.port)],
            env=self.env,
            cwd=self.workdir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent did not start within 30 s:\n{self.output()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def output(self) -> str:
        if self.log is None:
            return ""
        self.log.seek(0)
        return str(self.log.read().decode(errors="replace"))

    def audit(self) -> list[dict[str, Any]]:
        path = self.workdir / "audit.jsonl"
        return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()] if path.exists() else []


@dataclass
class Seeded:
    """What the seed put on the server: bundle ids by name and the plaintext markers only the agent can show."""

    runs: dict[str, str] = field(default_factory=dict)
    markers: dict[str, str] = field(default_factory=dict)
    issues: dict[str, int] = field(default_factory=dict)
    started: dict[str, datetime] = field(default_factory=dict)  # when each web run began, by name


SITE = "/srv/venv/lib/python3.12/site-packages"
# A traceback as an ASGI app records it, outermost first: FluxRun's middleware, the framework, two frames of
# the app (the second raised), and nothing after: the dashboard must put the app first and hide FluxRun.
TRACEBACK = [
    {"file": f"{SITE}/fluxrun/middleware/asgi.py", "line": 88, "function": "FluxRunMiddleware.__call__",
     "module": "fluxrun.middleware.asgi", "in_app": False, "code": "await self.app(scope, receive, send)"},
    {"file": f"{SITE}/starlette/routing.py", "line": 714, "function": "Router.__call__",
     "module": "starlette.routing", "in_app": False, "code": "await route.handle(scope, receive, send)"},
    {"file": f"{SITE}/starlette/routing.py", "line": 288, "function": "Route.handle",
     "module": "starlette.routing", "in_app": False, "code": "await self.app(scope, receive, send)"},
    {"file": f"{SITE}/fastapi/routing.py", "line": 301, "function": "run_endpoint_function",
     "module": "fastapi.routing", "in_app": False, "code": "return await dependant.call(**values)"},
    {"file": "shop/views.py", "line": 12, "function": "login_view", "module": "shop.views", "in_app": True,
     "code": "return login(form)"},
    {"file": "shop/app.py", "line": 30, "function": "login", "module": "shop.app", "in_app": True,
     "code": "price = item['price']"},
]  # fmt: skip
RANDOM_UUID = "6f1c0b2e-9a7d-4c3b-8e5f-a1b2c3d4e5f6"


def web_payload(
    bundle_id: str, marker: str, *, route: str, error: str, message: str, minutes_ago: int
) -> dict[str, Any]:
    """A web request shaped like an ASGI capture: an upstream call whose response body holds `marker`,
    credentials where the agent must mask them, env, time, randomness, a boundary and a log."""
    body = orjson.dumps({"user": "al", "password": "hunter2-body", "note": marker}).decode()
    started = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return {
        "format": 1,
        "bundle_id": bundle_id,
        "execution": "asgi",
        "entry": "shop:app",
        "started_at": started.isoformat().replace("+00:00", "Z"),
        "request": {
            "method": "POST",
            "path": route,
            "query_string": "next=%2Fhome&session=sess-42",
            "scheme": "http",
            "http_version": "1.1",
            "headers": [
                ["host", "shop.test"],
                ["authorization", "Bearer tok-live-authorization-9f8e7d"],
                ["content-type", "application/json"],
            ],
            "route": route,
            "request_id": f"req-{bundle_id[:12]}",
            "body": {"size": len(body), "text": body},
        },
        "events": [
            {
                "seq": 0, "kind": "http", "call": "POST https://auth.test/token", "task": "0", "site": "shop:login:12",
                "start_ns": 1_000_000, "dur_ns": 42_000_000,
                "data": {
                    "client": "httpx",
                    "request": {
                        "method": "POST",
                        "url": "https://auth.test/token",
                        "headers": [["Authorization", "Bearer upstream-secret-1"]],
                        "body": {"size": 2, "text": "{}"},
                    },
                    "response": {
                        "status": 200,
                        "headers": [["content-type", "application/json"]],
                        "body": {"text": orjson.dumps({"access_token": "at-upstream-2", "greeting": marker}).decode()},
                    },
                },
            },
            {
                "seq": 1, "kind": "env", "call": "env SHOP_DB_PASSWORD", "task": "0", "site": "shop:login:13",
                "start_ns": 44_000_000, "dur_ns": 0,
                "data": {"key": "SHOP_DB_PASSWORD", "present": True, "value": "env-secret-3"},
            },
            {
                "seq": 2, "kind": "env", "call": "env SHOP_REGION", "task": "0", "site": "shop:login:14",
                "start_ns": 44_100_000, "dur_ns": 0,
                "data": {"key": "SHOP_REGION", "present": True, "value": "eu-west-7"},
            },
            {
                "seq": 3, "kind": "time", "call": "time.time", "task": "0", "site": "shop:login:15",
                "start_ns": 45_000_000, "dur_ns": 0, "data": {"value": 1764322800.25},
            },
            {
                "seq": 4, "kind": "random", "call": "uuid.uuid4", "task": "0", "site": "shop:login:16",
                "start_ns": 45_100_000, "dur_ns": 0, "data": {"value": {"$t": "uuid", "v": RANDOM_UUID}},
            },
            {
                "seq": 5, "kind": "host", "call": "accounts.load", "task": "0", "site": "shop:login:17",
                "start_ns": 46_000_000, "dur_ns": 8_000_000,
                "data": {"name": "accounts.load", "args": [7], "kwargs": {}, "result": {"plan": "pro"}},
            },
            {
                "seq": 6, "kind": "log", "call": "WARNING shop", "task": "0", "site": "shop:login:18",
                "start_ns": 55_000_000, "dur_ns": 0,
                "data": {"logger": "shop", "level": "WARNING", "message": f"login for al ({marker})"},
            },
        ],
        "outcome": {
            "kind": "error",
            "status": 500,
            "error": {
                "type": error,
                "message": message,
                "frames": TRACEBACK,
                "fingerprint": hashlib.sha256(f"{route} {error}".encode()).hexdigest()[:16],
            },
        },
        "sdk": {"name": "tests", "version": "0"},
        "release": "1.4.0",
        "environment": "production",
    }  # fmt: skip


def ingest(server: FluxRunServer, bundle: bytes) -> str:
    response = httpx.post(
        f"{server.url}/v1/executions",
        content=encode_batch([bundle]),
        headers={"authorization": f"Bearer {server.tokens['ingest']}"},
        timeout=30,
    )
    assert response.status_code == 202, response.text
    accepted = response.json()["accepted"]
    assert len(accepted) == 1, f"the server refused the bundle: {response.text}"
    [bundle_id] = accepted
    deadline = time.monotonic() + 15
    while server.api(f"/v1/runs/{bundle_id}").status_code != 200:
        assert time.monotonic() < deadline, f"run {bundle_id} never became visible"
        time.sleep(0.05)
    return str(bundle_id)


def capture_jobs(keys: Any, directory: Path) -> dict[str, bytes]:
    """Real captures from `fluxrun_dashboard_jobs`, as bundle bytes: `charge` fails with KeyError (and still
    does in the agent), `convert` failed in code the agent has since fixed, and `refund` ran code older than
    the agent's, which now makes a call the recording never saw."""
    sys.path.insert(0, str(HERE))
    import fluxrun_dashboard_jobs as jobs

    out: dict[str, bytes] = {}
    jobs.RATES_FIXED = jobs.SENDS_RECEIPT = False
    try:
        for name, call, error in (
            ("charge", lambda: jobs.charge(7, 100), KeyError),
            ("convert", lambda: jobs.convert(100), KeyError),
            ("refund", lambda: jobs.refund(12), ValueError),
        ):
            folder = directory / name
            fluxrun.init(directory=folder, capture_key=keys.capture)
            try:
                with pytest.raises(error):
                    call()
                assert fluxrun.flush(5.0)
            finally:
                fluxrun.shutdown()
            [path] = folder.glob("*.fluxrun")
            # captured to a folder (no DSN), so it names no project and no server accepts it: sealed again for
            # acme/shop, as an app with FLUXRUN_DSN=https://TOKEN@host/acme/shop seals it
            opened = open_bundle(path.read_bytes(), keys.replay_key)
            out[name] = Sealer(load_capture_key(keys.capture), sdk="tests", project="acme/shop").seal(
                summary=opened.summary, payload=opened.payload, bundle_id=opened.sealed.bundle_id
            )
    finally:
        jobs.RATES_FIXED = jobs.SENDS_RECEIPT = True
    return out


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, keys: Any) -> Iterator[FluxRunServer]:
    with fluxrun_server(tmp_path_factory.mktemp("dashboard-server"), keys.capture) as srv:
        srv.tokens["admin"] = srv.admin("create-api-key", "acme", "lead", "--role", "admin")
        yield srv


@pytest.fixture(scope="session")
def seeded(server: FluxRunServer, keys: Any, tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    sealer = Sealer(load_capture_key(keys.capture), sdk="tests", project="acme/shop")
    seeded = Seeded()
    kinds = [
        ("login", "/login", "builtins:KeyError", "'price'", [5, 40, 200]),
        ("checkout", "/checkout", "builtins:ValueError", "amount must be positive", [15, 90]),
        ("search", "/search", "builtins:TimeoutError", "search backend timed out", [30]),
    ]
    for name, route, error, message, ages in kinds:
        for i, minutes in enumerate(ages):
            bundle_id = secrets.token_hex(16)
            marker = f"PLAINTEXT-MARKER-{secrets.token_hex(8)}"
            payload = web_payload(bundle_id, marker, route=route, error=error, message=message, minutes_ago=minutes)
            summary = build_summary(payload, scrubber=default_scrubber(), duration_ns=64_000_000)
            ingest(server, sealer.seal(summary=summary, payload=payload, bundle_id=bundle_id))
            seeded.runs[f"{name}{i}"] = bundle_id
            seeded.markers[f"{name}{i}"] = marker
            seeded.started[f"{name}{i}"] = datetime.fromisoformat(payload["started_at"])
    for name, bundle in capture_jobs(keys, tmp_path_factory.mktemp("captured")).items():
        seeded.runs[name] = ingest(server, bundle)
    for run in server.runs():
        for name, bundle_id in seeded.runs.items():
            if run["bundle_id"] == bundle_id and run["issue_id"] is not None:
                seeded.issues[name.rstrip("0123456789")] = run["issue_id"]
    # CI replayed the checkout failure and it no longer fails: its issue becomes guarded, with history.
    report = httpx.post(
        f"{server.url}/v1/regression-runs",
        json={"results": [{"bundle_id": seeded.runs["checkout0"], "outcome": "fixed", "ci": {"run": "412"}}]},
        headers={"authorization": f"Bearer {server.tokens['ci']}"},
        timeout=10,
    )
    assert report.status_code == 201, report.text
    return seeded


@pytest.fixture(scope="session")
def agent(server: FluxRunServer, keys: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    """`fluxrun agent` on loopback for acme/shop, pinned to the server's grant key, CORS open to the dashboard."""
    document = httpx.get(f"{server.url}/v1/grant-key", timeout=10).json()
    workdir = tmp_path_factory.mktemp("agent")
    env = {
        **os.environ,
        "FLUXRUN_REPLAY_KEY": str(keys.replay),
        "FLUXRUN_AGENT_GRANT_KEY": f"{document['key_id']}:{document['public_key']}",
        "FLUXRUN_AGENT_PROJECT": str(server.project_id()),
        "FLUXRUN_AGENT_ORIGIN": server.url,
        "FLUXRUN_AGENT_AUDIT_LOG": str(workdir / "audit.jsonl"),
        "PYTHONPATH": os.pathsep.join([str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    for name in ("FLUXRUN_CAPTURE_KEY", "FLUXRUN_AGENT_SERVER"):
        env.pop(name, None)
    port = free_port()
    running = Agent(f"http://127.0.0.1:{port}", port, env, workdir)
    running.start()
    try:
        yield running
    finally:
        running.stop()
        if running.log is not None:
            running.log.close()


# Module scope, not session: Playwright's sync API keeps an asyncio loop running on the main thread while it
# is open, and tests collected after these (asyncio.run in tests/integration) would fail under it.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        ensure("chromium", "chromium", str(CHROMIUM))
    except RuntimeError as exc:
        pytest.fail(f"the dashboard's browser tests need Debian's Chromium at {CHROMIUM}: {exc}", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where page screenshots go: FLUXRUN_SCREENSHOTS (e.g. docs/screenshots to refresh the README's), else a
    temporary folder, so an ordinary test run does not rewrite committed images."""
    chosen = os.environ.get("FLUXRUN_SCREENSHOTS")
    if chosen:
        folder = Path(chosen) if os.path.isabs(chosen) else REPO / chosen
    else:
        folder = tmp_path_factory.mktemp("shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class Dashboard:
    """One browser context on the dashboard, recording every request the page makes."""

    page: Any
    server: FluxRunServer
    agent: Agent
    requests: list[dict[str, Any]]

    def sign_in(self, key: str = "api", agent_url: str | None = None) -> None:
        self.page.goto(self.server.url + "/")
        self.page.get_by_label("API key").fill(self.server.tokens[key])
        self.page.get_by_label("Agent URL").fill(agent_url or self.agent.url)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.get_by_role("heading", name="Issues").wait_for()

    def to_server(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["url"].startswith(self.server.url)]

    def to_agent(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["url"].startswith(self.agent.url)]


@pytest.fixture
def dashboard(browser: Any, server: FluxRunServer, agent: Agent, seeded: Seeded) -> Iterator[Dashboard]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    requests: list[dict[str, Any]] = []

    def record(request: Any) -> None:
        requests.append(
            {
                "url": request.url,
                "method": request.method,
                "headers": request.headers,
                "body": request.post_data_buffer or b"",
            }
        )

    page.on("request", record)
    try:
        yield Dashboard(page, server, agent, requests)
    finally:
        context.close()


Shot = Callable[[Any, str], Path]


@pytest.fixture
def shot(screenshots: Path) -> Shot:
    def take(page: Any, name: str) -> Path:
        path = screenshots / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
