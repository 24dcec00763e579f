"""The product loop with real processes: a failure under uvicorn becomes a replay test that reproduces it
with the upstream gone and no network, then guards the fix."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from servers import uvicorn_process

pytestmark = pytest.mark.slow

APP = """
import os

import httpx
from fastapi import FastAPI

import fluxrun

fluxrun.init()  # FLUXRUN_CAPTURE_KEY and FLUXRUN_DIR from the environment where it runs

app = FastAPI()
app.add_middleware(fluxrun.FluxRunMiddleware)


@app.get("/orders/{{order_id}}")
async def order(order_id: int):
    upstream = os.environ.get("SHOP_UPSTREAM", "http://pricing.internal")
    async with httpx.AsyncClient() as client:
        quote = (await client.get(f"{{upstream}}/price/sku-{{order_id}}")).json()
    return {{"order": order_id, "total": {total}}}
"""
BROKEN = 'quote["price"] * 2'
FIXED = 'quote.get("price", quote.get("amount")) * 2'

GUARD_TESTS = """
import fluxrun

BUNDLE = {bundle!r}


@fluxrun.replay(BUNDLE, expect="reproduce")
def test_the_bug_reproduces(fluxrun_replay):
    assert fluxrun_replay.new.error_type == "builtins:KeyError"
    assert fluxrun_replay.served["http"] == 1


@fluxrun.replay(BUNDLE)
def test_the_fix_holds(fluxrun_replay):
    assert fluxrun_replay.response["status"] == 200
"""


def write_app(project: Path, total: str) -> None:
    (project / "orders_app.py").write_text(textwrap.dedent(APP.format(total=total)))


def run_pytest(project: Path, keys, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLUXRUN_REPLAY_KEY": str(keys.replay), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("FLUXRUN_CAPTURE_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_production_failure_becomes_a_regression_guard(tmp_path, keys):
    project = tmp_path / "project"
    (project / "bundles").mkdir(parents=True)
    write_app(project, BROKEN)
    env = {"FLUXRUN_CAPTURE_KEY": str(keys.capture), "FLUXRUN_DIR": str(project / "bundles")}
    with uvicorn_process("upstream_app:app") as upstream:
        with uvicorn_process("orders_app:app", {**env, "SHOP_UPSTREAM": upstream}, app_dir=project) as shop:
            assert httpx.get(f"{shop}/orders/1").status_code == 200
            assert httpx.get(f"{shop}/orders/7").status_code == 500  # sku-7: the upstream's schema changed
            deadline = time.monotonic() + 10
            while not list((project / "bundles").glob("*.fluxrun")) and time.monotonic() < deadline:
                time.sleep(0.05)
    # both servers are gone now: the replay must not need them
    (bundle,) = (project / "bundles").glob("*.fluxrun")
    (project / "test_orders_guard.py").write_text(GUARD_TESTS.format(bundle=str(bundle.relative_to(project))))

    before_fix = run_pytest(project, keys, "test_orders_guard.py")
    assert "1 failed, 1 passed" in before_fix.stdout, before_fix.stdout + before_fix.stderr
    assert "test_the_bug_reproduces PASSED" in before_fix.stdout
    assert "expected the failure to be fixed, but it is reproduced" in before_fix.stdout

    guard_before = run_pytest(project, keys, "--fluxrun-bundles", "bundles", "bundles")
    assert "failed" in guard_before.stdout and "KeyError" in guard_before.stdout, guard_before.stdout

    write_app(project, FIXED)
    after_fix = run_pytest(project, keys, "test_orders_guard.py")
    assert "test_the_fix_holds PASSED" in after_fix.stdout, after_fix.stdout + after_fix.stderr
    assert "test_the_bug_reproduces FAILED" in after_fix.stdout
    guard_after = run_pytest(project, keys, "--fluxrun-bundles", "bundles", "bundles")  # only the guards
    assert guard_after.returncode == 0, guard_after.stdout + guard_after.stderr
    assert "1 passed" in guard_after.stdout
