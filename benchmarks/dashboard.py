"""How soon the dashboard's issues page is usable with 100,000 runs indexed, in a real browser.

A real `fluxrun server` (subprocess, embedded default: SQLite + filesystem) is bulk-loaded with N runs
(100,000 by default) spread over 300 issues: the server's own schema (`make_engine` + `migrate`), the
workspace, project and API key made by `fluxrun server admin`, then Issue and Execution rows inserted with
SQLAlchemy core (ingesting that many through HTTP would take minutes and is measured in
benchmarks/ingest.py). Runs are spread over 14 days, a third in the last 24 hours, with a Zipf-like
share per issue, so the sparkline query has real work to do.

Debian's Chromium (Playwright, /usr/bin/chromium, headless) then opens `/#/issues` cold, in a fresh
browser context each time (no cache, API key already in session storage, so sign-in is not timed). An
init script stamps `performance.now()` (milliseconds since navigation start) when:

- usable: the first issue row is in the DOM (list rendered, sortable, filterable, keyboard-navigable);
- sparklines: the first sparkline is drawn (they load after the list, from /issues/series).

Baselines from the same run: the two API calls the page makes, timed from Python with one keep-alive
httpx client (`GET /v1/projects/{id}/issues?limit=1000` and `GET .../issues/series`), and the page on an
empty project (no issues) for the fixed cost of loading the app. Target: usable within 1,000 ms (p95).

Run: `python benchmarks/dashboard.py` (about a minute; `--runs 1000000` for a million). Needs Chromium
(`apt-get install -y chromium`) and the project with its test extra (`pip install -e '.[test]'`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from harness import free_port, percentile
from sqlalchemy import insert, text

from fluxrun_server.index.database import make_engine, migrate
from fluxrun_server.index.models import Execution, Issue

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
ROUTES = [f"/api/v1/{name}" for name in ("checkout", "cart", "login", "search", "orders", "payments", "users", "stock")]
ERRORS = [
    "builtins:KeyError",
    "builtins:ValueError",
    "builtins:TimeoutError",
    "httpx:ReadTimeout",
    "shop.errors:Declined",
]
STAMP = """
(() => {
  sessionStorage.setItem("fluxrun.apiKey", %(key)s);
  localStorage.setItem("fluxrun.agentUrl", "http://127.0.0.1:9");
  const seen = () => {
    const row = document.querySelector('table[aria-label="Issues"] tbody tr');
    if (!window.__usable && row) window.__usable = performance.now();
    if (!window.__empty && document.querySelector('.state.empty')) window.__empty = performance.now();
    if (!window.__spark && document.querySelector("svg.spark")) window.__spark = performance.now();
  };
  new MutationObserver(seen).observe(document, { subtree: true, childList: true });
})();
"""


def admin(env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "fluxrun.cli.app", "server", "admin", *args],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return out.stdout.strip()


def load(url: str, project_id: int, runs: int, issues: int, seed: int = 7) -> float:
    """Insert `issues` issues and `runs` executions for the project; returns the seconds it took."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    weights = [1 / (i + 1) ** 0.9 for i in range(issues)]
    issue_meta = [
        (hashlib.sha256(f"fp{i}".encode()).hexdigest()[:16], ERRORS[i % len(ERRORS)], ROUTES[i % len(ROUTES)])
        for i in range(issues)
    ]
    assigned = rng.choices(range(issues), weights, k=runs)
    started = [
        now - timedelta(seconds=rng.uniform(0, 86_400 if rng.random() < 1 / 3 else 14 * 86_400)) for _ in range(runs)
    ]
    engine = make_engine(url)
    begin = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text("PRAGMA synchronous=OFF"))
        firsts: dict[int, datetime] = {}
        lasts: dict[int, datetime] = {}
        counts = [0] * issues
        for i, at in zip(assigned, started, strict=True):
            counts[i] += 1
            firsts[i] = min(firsts.get(i, at), at)
            lasts[i] = max(lasts.get(i, at), at)
        issue_rows = [
            {"project_id": project_id, "fingerprint": fp, "error_type": err, "message": f"failure number {i}",
             "route": route, "count": counts[i], "first_seen": firsts[i], "last_seen": lasts[i],
             "status": ("open", "open", "regressed", "guarded", "resolved")[i % 5]}
            for i, (fp, err, route) in enumerate(issue_meta) if counts[i]
        ]  # fmt: skip
        conn.execute(insert(Issue.__table__), issue_rows)  # type: ignore[attr-defined]
        ids = {fp: issue_id for issue_id, fp in conn.execute(text("SELECT id, fingerprint FROM issue")).all()}
        batch: list[dict[str, Any]] = []
        for n, (i, at) in enumerate(zip(assigned, started, strict=True)):
            fp, err, route = issue_meta[i]
            batch.append(
                {"bundle_id": f"{n:032x}", "project_id": project_id, "issue_id": ids[fp], "received_at": at,
                 "started_at": at, "route": route, "method": "POST", "status": 500, "outcome": "error",
                 "error_type": err, "error_message": f"failure number {i}", "fingerprint": fp,
                 "duration_ms": 12.5, "release": f"1.{n % 9}.0", "environment": "production", "request_id": None,
                 "trace_id": None, "signing_key_id": "sig_bench", "event_count": 3,
                 "summary": {"route": route, "events": [], "counts": {"http": 1, "env": 1, "log": 1}},
                 "object_key": "none", "object_offset": 0, "object_length": 0, "object_sha256": ""}
            )  # fmt: skip
            if len(batch) == 20_000:
                conn.execute(insert(Execution.__table__), batch)  # type: ignore[attr-defined]
                batch = []
        if batch:
            conn.execute(insert(Execution.__table__), batch)  # type: ignore[attr-defined]
    engine.dispose()
    return time.perf_counter() - begin


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--issues", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"Chromium is not at {CHROMIUM}: apt-get install -y chromium", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="fluxrun-dash-bench-") as tmp:
        data = Path(tmp) / "data"
        port = free_port()
        env = {**os.environ, "FLUXRUN_SERVER_DATA_DIR": str(data), "FLUXRUN_SERVER_PORT": str(port)}
        url = f"http://127.0.0.1:{port}"
        database = f"sqlite:///{(data / 'index.db').resolve()}"  # the embedded default, as the server resolves it
        data.mkdir()
        admin(env, "create-workspace", "bench")
        admin(env, "create-project", "bench", "shop")
        admin(env, "create-project", "bench", "empty")
        key = admin(env, "create-api-key", "bench", "reader")
        engine = make_engine(database)
        migrate(engine)
        with engine.connect() as conn:
            projects = dict(conn.execute(text("SELECT name, id FROM project")).all())
        engine.dispose()
        loaded = load(database, projects["shop"], args.runs, args.issues)
        print(f"loaded {args.runs:,} runs over {args.issues} issues in {loaded:.1f} s")

        log = (Path(tmp) / "server.log").open("wb")
        server = subprocess.Popen([sys.executable, "-m", "fluxrun.cli.app", "server"], env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the server did not start")
                time.sleep(0.1)
            api: dict[str, list[float]] = {"issues": [], "series": [], "projects": []}
            with httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=30) as client:
                shop = projects["shop"]
                count = len(client.get(f"/v1/projects/{shop}/issues", params={"limit": 1000}).json()["issues"])
                for _ in range(args.repeats):
                    for name, path, params in (
                        ("issues", f"/v1/projects/{shop}/issues", {"limit": 1000}),
                        ("series", f"/v1/projects/{shop}/issues/series", {"hours": 24}),
                        ("projects", "/v1/projects", {}),
                    ):
                        begin = time.perf_counter()
                        client.get(path, params=params).raise_for_status()
                        api[name].append((time.perf_counter() - begin) * 1000)
            page: dict[str, list[float]] = {"usable": [], "spark": [], "empty": []}
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
                for repeat in range(args.repeats + 1):
                    for project, marks in ((projects["shop"], ("usable", "spark")), (projects["empty"], ("empty",))):
                        # bypass_csp: only so Playwright can poll the stamps; the page itself runs under its CSP.
                        context = browser.new_context(bypass_csp=True)
                        context.add_init_script(STAMP % {"key": json.dumps(key)})
                        tab = context.new_page()
                        tab.goto(f"{url}/#/issues?project={project}")
                        for mark in marks:
                            tab.wait_for_function(f"window.__{mark} !== undefined", timeout=30_000)
                            if repeat:  # the first round warms the server's caches and is not counted
                                page[mark].append(float(tab.evaluate(f"window.__{mark}")))
                        context.close()
                browser.close()
        finally:
            server.terminate()
            server.wait(30)
            log.close()

    rows = [
        ("issues page usable (first row rendered)", page["usable"], 1000.0),
        ("issues page sparklines drawn", page["spark"], None),
        ("baseline: empty project page (app load)", page["empty"], None),
        (f"API GET issues?limit=1000 ({count} issues)", api["issues"], None),
        ("API GET issues/series (24 h)", api["series"], None),
        ("baseline: API GET /v1/projects", api["projects"], None),
    ]
    print(
        f"\nDashboard, {args.runs:,} runs, {count} issues, {args.repeats} cold loads each (ms since navigation start)"
    )
    print(f"{'measure':<48} {'p50':>8} {'p95':>8} {'max':>8}  target")
    result = {}
    for name, values, target in rows:
        p50, p95 = statistics.median(values), percentile(values, 95)
        verdict = "" if target is None else f"p95 < {target:.0f} ms: {'PASS' if p95 < target else 'FAIL'}"
        print(f"{name:<48} {p50:8.0f} {p95:8.0f} {max(values):8.0f}  {verdict}")
        result[name] = {"p50": p50, "p95": p95, "max": max(values)}
    if args.json:
        args.json.write_text(json.dumps({"runs": args.runs, "issues": count, "results": result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
