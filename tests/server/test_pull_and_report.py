"""From the server to a regression guard: `fluxrun pull` downloads a failure, pytest replays it, and the
plugin reports the outcome so the issue shows regressed, then guarded after the fix."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import httpx
import pytest
from server_process import wait_until

from fluxrun.bundle import Sealer, load_capture_key, open_bundle
from fluxrun_server.ingest.batch import encode_batch

pytestmark = pytest.mark.slow

MODULE = """
import fluxrun

FIXED = {fixed}


@fluxrun.capture
def settle(invoice):
    if FIXED:
        return "settled"
    raise ValueError(f"invoice {{invoice}} has no currency"){pad}
"""


def write_module(folder, fixed):
    (folder / "billing.py").write_text(textwrap.dedent(MODULE.format(fixed=fixed, pad="  # fixed" if fixed else "")))


@pytest.mark.parametrize("server", ["embedded"], indirect=True)
def test_pull_replay_and_report(server, keys, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    write_module(project, fixed=False)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "FLUXRUN_REPLAY_KEY": str(keys.replay)}
    capture = (
        f"import fluxrun, billing\nfluxrun.init(directory='captured', capture_key={str(keys.capture)!r})\n"
        "try:\n    billing.settle('inv-9')\nexcept ValueError:\n    pass\nfluxrun.shutdown()\n"
    )
    subprocess.run([sys.executable, "-c", capture], cwd=project, env=env, check=True)
    (bundle,) = (project / "captured").glob("*.fluxrun")
    # captured to a folder (no DSN): it names no project, so it is sealed again for acme/shop, as an app with
    # FLUXRUN_DSN=https://TOKEN@host/acme/shop would have sealed it
    opened = open_bundle(bundle.read_bytes(), keys.replay_key)
    for_the_server = Sealer(load_capture_key(keys.capture), sdk="tests", project="acme/shop").seal(
        summary=opened.summary, payload=opened.payload, bundle_id=opened.sealed.bundle_id
    )
    bundle.write_bytes(for_the_server)
    accepted = httpx.post(
        f"{server.url}/v1/executions",
        content=encode_batch([bundle.read_bytes()]),
        headers={"authorization": f"Bearer {server.tokens['ingest']}"},
    ).json()["accepted"]
    bundle_id = accepted[0]
    api = {"authorization": f"Bearer {server.tokens['api']}"}
    assert wait_until(lambda: httpx.get(f"{server.url}/v1/runs/{bundle_id}", headers=api).status_code == 200)
    issue_id = httpx.get(f"{server.url}/v1/runs/{bundle_id}", headers=api).json()["issue_id"]

    pulled = subprocess.run(
        [sys.executable, "-m", "fluxrun.cli.app", "pull", f"issue:{issue_id}", "--to", "tests/fluxrun",
         "--server", server.url, "--api-key", server.tokens["api"]],
        cwd=project, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    (guard,) = (project / "tests" / "fluxrun").glob("*.fluxrun")
    assert guard.read_bytes() == bundle.read_bytes()  # still sealed, byte for byte

    dsn = f"http://{server.tokens['ci']}@{server.url.removeprefix('http://')}/acme/shop"  # CI's own token kind
    run = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "--fluxrun-bundles",
        "tests/fluxrun",
        "tests/fluxrun",
    ]
    before = subprocess.run(
        run, cwd=project, env={**env, "FLUXRUN_DSN": dsn}, capture_output=True, text=True, timeout=120
    )
    assert "1 failed" in before.stdout, before.stdout + before.stderr
    assert f"issue {issue_id} regressed" in before.stdout
    assert httpx.get(f"{server.url}/v1/issues/{issue_id}", headers=api).json()["status"] == "regressed"

    write_module(project, fixed=True)
    after = subprocess.run(
        run, cwd=project, env={**env, "FLUXRUN_DSN": dsn}, capture_output=True, text=True, timeout=120
    )
    assert "1 passed" in after.stdout, after.stdout + after.stderr
    issue = httpx.get(f"{server.url}/v1/issues/{issue_id}", headers=api).json()
    assert issue["status"] == "guarded"
    assert [r["outcome"] for r in issue["regression_runs"]] == ["fixed", "reproduced"]


def test_pull_explains_a_missing_api_key(tmp_path, monkeypatch):
    env = {k: v for k, v in os.environ.items() if k != "FLUXRUN_API_KEY"}
    result = subprocess.run(
        [sys.executable, "-m", "fluxrun.cli.app", "pull", "abc", "--server", "http://127.0.0.1:9"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1 and "FLUXRUN_API_KEY" in result.stderr + result.stdout
