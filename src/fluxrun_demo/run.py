"""`fluxrun demo`: the whole loop on the embedded default, one readable line per step.

A server and an agent start on loopback, a project and its keys are made, a small shop fails on one
upstream answer, the failure is captured and shipped, pulled back still encrypted, replayed as a pytest
test that fails, the fix is applied, the same test passes, and CI's report marks the issue guarded.
"""

from __future__ import annotations

import base64
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rich.console import Console
from rich.markup import escape

from fluxrun.errors import FluxRunError
from fluxrun_demo.processes import Process, clean_env, serve_in_thread, start_on_free_port

__all__ = ["run_demo"]

TEST = '''"""Regression guard for issue {issue}: {title}. Written by `fluxrun demo`.

The bundle was pulled from the server with `fluxrun pull issue:{issue} --to tests/fluxrun/`. Replay serves
every recorded call (the order read, the env, the uuid, the upstream's answer) and blocks the network.
"""

import fluxrun


@fluxrun.replay("tests/fluxrun/{bundle}")
def test_order_total_survives_the_new_price_schema(fluxrun_replay):
    assert fluxrun_replay.response["status"] == 200
'''

# The fix the demo applies to its copy of shop.py, as a developer would.
BUG = '    price = answer.json()["unit_price"]  # the upstream renamed this field for some skus: KeyError\n'
FIX = (
    "    quote = answer.json()\n"
    '    # fixed: the upstream answers {"unit_price": 12.5} or, for some skus, {"price": {"amount": 1250}} in cents\n'
    '    price = quote["unit_price"] if "unit_price" in quote else quote["price"]["amount"] / 100\n'
)


@dataclass
class Loop:
    """What the steps share: the folder, the processes, the project's credentials."""

    console: Console
    root: Path
    server: Process | None = None
    agent: Process | None = None
    shop: Process | None = None
    api_key: str = ""
    ingest_token: str = ""
    ci_token: str = ""
    project_id: int = 0
    step_no: int = 0

    def step(self, what: str, text: str) -> None:
        self.step_no += 1
        self.console.print(f"{self.step_no:>2}. [bold]{what}[/]: {escape(text)}", soft_wrap=True)

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        assert self.server is not None
        response = httpx.request(
            method, self.server.url + path, headers={"authorization": f"Bearer {self.api_key}"}, timeout=30, **kwargs
        )
        if response.status_code >= 400:
            raise FluxRunError(
                f"the demo's server answered {method} {path} with {response.status_code}: {response.text}"
            )
        return response.json() if response.headers.get("content-type", "").startswith("application/json") else response

    def wait_for(self, what: str, check: Any, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise FluxRunError(f"the demo waited {timeout:.0f} s for {what}; logs are in {self.root / 'logs'}")
            time.sleep(0.1)


def _require() -> None:
    for name in ("fastapi", "uvicorn", "httpx", "pytest", "sqlmodel"):
        try:
            __import__(name)
        except ImportError:
            raise FluxRunError(
                f"fluxrun demo needs {name}: install the demo extra with `pip install 'fluxrun[demo]'`"
            ) from None


def _provision(loop: Loop, data_dir: Path, capture_key: Path) -> str:
    """Workspace `demo`, project `demo/shop` with the app's signing key, an ingest token and an admin API key."""
    from sqlmodel import Session

    from fluxrun.bundle import load_capture_key, signing_public_key
    from fluxrun_server import admin
    from fluxrun_server.index.database import make_engine, migrate

    data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(f"sqlite:///{(data_dir / 'index.db').resolve()}")
    migrate(engine)
    key_id, public = signing_public_key(load_capture_key(capture_key))
    with Session(engine) as session:
        admin.create_workspace(session, "demo")
        project = admin.create_project(session, "demo", "shop")
        assert project.id is not None
        loop.project_id = project.id
        admin.register_key(session, "demo/shop", f"{key_id}:{public}")
        loop.ingest_token = admin.issue_token(session, "demo/shop").secret
        loop.ci_token = admin.issue_token(session, "demo/shop", kind="ci").secret  # reports replay outcomes
        loop.api_key = admin.create_api_key(session, "demo", "demo-admin", role="admin").secret
    engine.dispose()
    return key_id


def _pytest(loop: Loop, env: dict[str, str]) -> tuple[int, str, str]:
    """Run the regression test in a fresh pytest process; return its exit code, summary and FluxRun report."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_regression.py"],
        cwd=loop.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = result.stdout.splitlines()
    summary = next((line.strip("= ") for line in reversed(lines) if re.search(r"\d+ (passed|failed|error)", line)), "")
    report = next((line for line in lines if line.startswith("FluxRun: ")), "no FluxRun report")
    if result.returncode not in (0, 1):
        raise FluxRunError(f"pytest could not run the regression test (exit {result.returncode}):\n{result.stdout}")
    (loop.root / "logs" / f"pytest-{loop.step_no}.log").write_text(result.stdout + result.stderr)
    return result.returncode, summary, report


def sign_in_link(server: str, agent: str) -> str:
    """The dashboard's sign-in page with the agent's URL filled in (`?agent=`, which the dashboard reads once
    and takes off the address): the demo's agent runs on a random port the form cannot guess."""
    return f"{server.rstrip('/')}/?agent={quote(agent, safe='')}"


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_demo(console: Console, directory: Path | None = None, *, serve: bool = False) -> None:
    _require()
    import httpx

    from fluxrun.bundle import generate_keys
    from fluxrun.cli.pull import pull
    from fluxrun_demo import upstream

    started = time.monotonic()
    signal.signal(signal.SIGTERM, _stop_on_sigterm)  # a terminated demo still stops its server, agent and shop
    keep = directory is not None  # a temporary folder holds replay.key: it goes when the demo ends, even on Ctrl-C
    root = (directory or Path(tempfile.mkdtemp(prefix="fluxrun-demo-"))).resolve()
    if directory is not None and directory.exists() and any(directory.iterdir()):
        raise FluxRunError(f"{directory} is not empty; give --dir a new folder (the demo makes its own server there)")
    root.mkdir(parents=True, exist_ok=True)
    loop = Loop(console, root)
    console.print(f"FluxRun demo in {root}" + ("" if keep else " (removed when the demo ends; --dir keeps one)"))
    try:
        with ExitStack() as stack:
            keys = root / "keys"
            generate_keys(keys)
            loop.step("keys", f"generated capture.key for the app and replay.key for you in {keys}")

            key_id = _provision(loop, root / "server", keys / "capture.key")

            def server_command(port: int) -> tuple[list[str], dict[str, str]]:
                env = {"FLUXRUN_SERVER_DATA_DIR": str(root / "server"), "FLUXRUN_SERVER_PORT": str(port)}
                return ["fluxrun.cli.app", "server"], clean_env(env)

            loop.server = start_on_free_port("server", server_command, health="/healthz", cwd=root, logs=root / "logs")
            stack.callback(loop.server.stop)
            server = loop.server.url
            loop.step("server", f"`fluxrun server` at {server} (embedded: WAL, SQLite index, file object store)")
            loop.step(
                "project",
                f"workspace demo, project demo/shop with signing key {key_id}, "
                f"ingest token {loop.ingest_token[:12]}…, CI token {loop.ci_token[:12]}…, "
                f"admin API key {loop.api_key[:12]}…",
            )

            def agent_command(port: int) -> tuple[list[str], dict[str, str]]:
                env = {
                    "FLUXRUN_AGENT_REPLAY_KEY": str(keys / "replay.key"),
                    "FLUXRUN_AGENT_SERVER": server,
                    "FLUXRUN_AGENT_PROJECT": "demo/shop",
                    "FLUXRUN_AGENT_ORIGIN": server,
                    "FLUXRUN_AGENT_AUDIT_LOG": str(root / "agent-audit.log"),
                    "FLUXRUN_AGENT_PORT": str(port),
                }
                return ["fluxrun.cli.app", "agent"], clean_env(env)

            loop.agent = start_on_free_port("agent", agent_command, health="/v1/health", cwd=root, logs=root / "logs")
            stack.callback(loop.agent.stop)
            loop.step("agent", f"`fluxrun agent` at {loop.agent.url}: the only process holding replay.key")

            pricing = stack.enter_context(serve_in_thread(upstream.app))
            shop_file = root / "demo_shop.py"
            shutil.copyfile(Path(__file__).with_name("shop.py"), shop_file)  # not imported: it calls fluxrun.init()
            server_port = server.rpartition(":")[2]
            dsn = f"http://{loop.ingest_token}@127.0.0.1:{server_port}/demo/shop"  # the path names the project
            shop_env = {
                "FLUXRUN_DSN": dsn,
                "FLUXRUN_CAPTURE_KEY": str(keys / "capture.key"),
                "FLUXRUN_DIR": str(root / "spool"),
                "FLUXRUN_RELEASE": "demo-1",
                "SHOP_PRICING_URL": pricing,
            }

            def shop_command(port: int) -> tuple[list[str], dict[str, str]]:
                return ["uvicorn", "demo_shop:app", "--host", "127.0.0.1", "--port", str(port)], clean_env(shop_env)

            loop.shop = start_on_free_port("shop", shop_command, health="/docs", cwd=root, logs=root / "logs")
            stack.callback(loop.shop.stop)
            loop.step("shop", f"demo_shop.py under uvicorn at {loop.shop.url}, shipping to FLUXRUN_DSN={server}")

            customer = {"authorization": "Bearer customer-session-7f3a9c", "connection": "close"}
            ok = httpx.get(f"{loop.shop.url}/orders/1/total", headers=customer, timeout=10)
            loop.step("request", f"GET /orders/1/total → {ok.status_code} {ok.text}  (not kept: it succeeded)")
            bad = httpx.get(f"{loop.shop.url}/orders/7/total", headers=customer, timeout=10)
            loop.step("request", f"GET /orders/7/total → {bad.status_code}  (the upstream answered a new schema)")

            def one_issue() -> Any:
                return loop.api("GET", f"/v1/projects/{loop.project_id}/issues")["issues"]

            (issue,) = loop.wait_for("the failure to reach the server", one_issue)
            (run,) = loop.api("GET", f"/v1/projects/{loop.project_id}/runs")["runs"]
            loop.step(
                "shipped",
                f"the shop sealed the failure and sent it; the server lists issue {issue['id']} "
                f"{issue['error_type'].rsplit(':', 1)[-1]}: {issue.get('message') or ''} "
                f"on {issue.get('route')} ({issue['status']}, {issue['count']} run, bundle {run['bundle_id'][:12]}…)",
            )

            grant = loop.api("POST", "/v1/grants", json={"bundle_id": run["bundle_id"], "action": "unlock"})
            ciphertext = loop.api("GET", f"/v1/runs/{run['bundle_id']}/bundle").content
            unlocked = httpx.post(
                f"{loop.agent.url}/v1/unlock",
                json={"grant": grant["grant"], "bundle": base64.b64encode(ciphertext).decode()},
                timeout=30,
            )
            if unlocked.status_code != 200:
                raise FluxRunError(f"the agent refused the unlock ({unlocked.status_code}): {unlocked.text}")
            payload = unlocked.json()["payload"]
            masked = unlocked.text.count("[Filtered]")
            loop.step(
                "unlock",
                f"a single-use grant from the server let the agent decrypt it: {len(payload['events'])} events, "
                f"{masked} secret value{'s' if masked != 1 else ''} masked (the server only ever held ciphertext)",
            )

            written = pull(console, f"issue:{issue['id']}", root / "tests" / "fluxrun", server=server,
                           api_key=loop.api_key, limit=100)  # fmt: skip
            loop.step("pull", f"`fluxrun pull issue:{issue['id']} --to tests/fluxrun/` wrote {written[0].name}")

            (root / "pytest.ini").write_text("[pytest]\n")  # the demo folder is its own pytest project
            title = f"{issue.get('route')} {issue['error_type'].rsplit(':', 1)[-1]}"
            (root / "tests" / "test_regression.py").write_text(
                TEST.format(issue=issue["id"], title=title, bundle=written[0].name)
            )
            loop.step("test", "wrote tests/test_regression.py: @fluxrun.replay of that bundle, expecting it fixed")

            test_env = clean_env(
                {
                    "FLUXRUN_REPLAY_KEY": str(keys / "replay.key"),
                    "FLUXRUN_DSN": f"http://{loop.ci_token}@127.0.0.1:{server_port}/demo/shop",  # its own token
                    "PYTHONPATH": str(root),
                }
            )
            code, summary, report = _pytest(loop, test_env)
            if code != 1:
                raise FluxRunError(f"the regression test should fail before the fix, but pytest said: {summary}")
            loop.step("pytest", f"{summary}: the replay reproduced the KeyError offline, as it must before the fix")

            source = shop_file.read_text()
            if BUG not in source:
                raise FluxRunError(f"{shop_file} does not hold the line the demo fixes")
            shop_file.write_text(source.replace(BUG, FIX))
            loop.step("fix", "demo_shop.py now reads both price schemas (the change a developer would commit)")

            code, summary, report = _pytest(loop, test_env)
            if code != 0:
                raise FluxRunError(f"the regression test should pass after the fix, but pytest said: {summary}")
            loop.step("pytest", f"{summary}: the same recording now answers 200; {report.removeprefix('FluxRun: ')}")

            guarded = loop.wait_for(
                "the issue to be guarded",
                lambda: (i := loop.api("GET", f"/v1/issues/{issue['id']}"))["status"] == "guarded" and i,
            )
            loop.step(
                "guarded",
                f"issue {guarded['id']} is {guarded['status']}; dashboard: {server}/#/issues/{guarded['id']}",
            )
            console.print(f"done in {time.monotonic() - started:.1f} s; logs in {root / 'logs'}")
            if serve:
                console.print(escape(f"sign in: {sign_in_link(server, loop.agent.url)}"), soft_wrap=True)
                console.print(
                    f"serving until Ctrl-C: dashboard {server} (sign in with API key {escape(loop.api_key)}), "
                    f"agent {loop.agent.url}, shop {loop.shop.url}"
                )
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    console.print("stopping")
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
            console.print(f"cleaned up {root}")
