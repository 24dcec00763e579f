"""The built dashboard inside the Python package: current with its sources, small, and served safely.

These need no browser. The freshness check recomputes the hash `dashboard/scripts/stamp.mjs` writes into
build-info.json, so CI fails when the sources change without `npm ci && npm run build`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import secrets
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from dashboard_fixtures import Seeded, ingest, web_payload
from postgres import create_database, drop_database
from server_process import FluxRunServer, fluxrun_server

from fluxrun.bundle import Sealer, load_capture_key
from fluxrun.model.export import build_summary
from fluxrun.scrub import default_scrubber

REPO = Path(__file__).resolve().parents[2]
SOURCES = REPO / "dashboard"
BUILT = REPO / "server" / "fluxrun_server" / "static" / "dashboard"
# Must match the roots in dashboard/scripts/stamp.mjs.
ROOTS = ["index.html", "package.json", "package-lock.json", "svelte.config.js", "tsconfig.json", "vite.config.ts",
         "scripts", "src"]  # fmt: skip
REBUILD = "run `npm ci && npm run build` in dashboard/ and commit server/fluxrun_server/static/dashboard"
INITIAL_JS_LIMIT = 150 * 1024


def source_files() -> list[str]:
    files: list[str] = []
    for root in ROOTS:
        path = SOURCES / root
        found = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        files += [p.relative_to(SOURCES).as_posix() for p in found]
    return sorted(files)


def source_hash(files: list[str]) -> str:
    total = hashlib.sha256()
    for name in files:
        total.update(f"{name}\0{hashlib.sha256((SOURCES / name).read_bytes()).hexdigest()}\n".encode())
    return total.hexdigest()


def test_built_files_match_the_sources() -> None:
    info_path = BUILT / "build-info.json"
    assert info_path.is_file(), f"no built dashboard in {BUILT}: {REBUILD}"
    info = json.loads(info_path.read_text())
    files = source_files()
    assert info["files"] == files, f"the dashboard's source files changed since the last build: {REBUILD}"
    assert info["source_sha256"] == source_hash(files), f"the built dashboard is stale: {REBUILD}"


def initial_assets() -> list[Path]:
    """The scripts index.html loads (and preloads) before the page can run."""
    html = (BUILT / "index.html").read_text()
    refs = re.findall(r'<script[^>]+src="([^"]+)"', html) + re.findall(
        r'<link[^>]+rel="modulepreload"[^>]+href="([^"]+)"', html
    )
    assert refs, "index.html loads no script"
    return [BUILT / ref.lstrip("/") for ref in refs]


def test_initial_javascript_is_under_150_kb_gzipped() -> None:
    sizes = {p.name: len(gzip.compress(p.read_bytes(), compresslevel=9)) for p in initial_assets()}
    assert sum(sizes.values()) < INITIAL_JS_LIMIT, f"initial JS is {sum(sizes.values())} bytes gzipped: {sizes}"


def test_every_built_asset_is_referenced_and_ships_in_the_wheel() -> None:
    html = (BUILT / "index.html").read_text()
    for asset in (BUILT / "assets").iterdir():
        assert f"/assets/{asset.name}" in html, f"{asset.name} is left over from an older build: {REBUILD}"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert "server/fluxrun_server" in wheel["packages"]
    assert "server/fluxrun_server/static/dashboard/**" in wheel.get("artifacts", [])


def test_server_serves_the_dashboard_at_root(server: FluxRunServer) -> None:
    page = httpx.get(server.url + "/", timeout=10)
    assert page.status_code == 200
    assert page.text == (BUILT / "index.html").read_text()
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["referrer-policy"] == "no-referrer"
    [script] = [p for p in initial_assets() if p.suffix == ".js"]
    asset = httpx.get(f"{server.url}/assets/{script.name}", timeout=10)
    assert asset.status_code == 200 and asset.content == script.read_bytes()
    assert asset.headers["content-type"].startswith("text/javascript")
    assert "immutable" in asset.headers["cache-control"]
    for bad in ("/assets/..%2Fpy.typed", "/assets/missing.js", "/assets/.hidden"):
        assert httpx.get(server.url + bad, timeout=10).status_code == 404, bad


def test_issue_series_counts_runs_per_hour(server: FluxRunServer, seeded: Seeded) -> None:
    project = server.project_id()
    body: dict[str, Any] = server.api(f"/v1/projects/{project}/issues/series", hours=24).json()
    assert body["hours"] == 24
    login = body["series"][str(seeded.issues["login"])]
    assert len(login) == 24 and sum(login) == 3  # seeded 5, 40 and 200 minutes ago
    # the run seeded 5 minutes ago counts in its own hour: the last one, or an earlier one when the hour has
    # turned since the seed (the seed is made once per session, possibly minutes before this test)
    this_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    hours_back = (this_hour - seeded.started["login0"]) // timedelta(hours=1) + 1  # 0 within this hour
    assert login[-1 - hours_back] >= 1
    assert sum(body["series"][str(seeded.issues["checkout"])]) == 2
    assert server.api(f"/v1/projects/{project}/issues/series", hours=0).status_code == 422
    assert server.api("/v1/projects/999999/issues/series").status_code == 404


def test_issue_series_on_postgresql(tmp_path: Path, keys: Any) -> None:
    """The sparkline query groups by hour in SQL, which differs per dialect: check PostgreSQL too."""
    url = create_database("fluxrun_dash")
    try:
        env = {"FLUXRUN_SERVER_DATABASE_URL": url}
        with fluxrun_server(tmp_path / "data", keys.capture, env) as server:
            sealer = Sealer(load_capture_key(keys.capture), sdk="tests", project="acme/shop")
            for minutes in (3, 70, 71):
                bundle_id = secrets.token_hex(16)
                payload = web_payload(
                    bundle_id, "m", route="/pay", error="builtins:KeyError", message="'x'", minutes_ago=minutes
                )
                summary = build_summary(payload, scrubber=default_scrubber(), duration_ns=1_000_000)
                ingest(server, sealer.seal(summary=summary, payload=payload, bundle_id=bundle_id))
            body = server.api(f"/v1/projects/{server.project_id()}/issues/series", hours=5).json()
            [series] = body["series"].values()
            assert len(series) == 5 and sum(series) == 3
            assert series[-1] + series[-2] >= 1 and series[-2] + series[-3] >= 2  # 3 min ago; 70 and 71 min ago
    finally:
        drop_database(url)
