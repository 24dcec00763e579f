"""`fluxrun replay` and `fluxrun export-test` from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import fluxrun
from fluxrun.cli import app

runner = CliRunner()
FIXED = {"value": False}


@fluxrun.capture
def nightly_sync(batch: str) -> str:
    if FIXED["value"]:
        return "ok"
    raise LookupError(f"batch {batch} not found")


@pytest.fixture
def bundle(captured) -> Path:
    FIXED["value"] = False
    with pytest.raises(LookupError):
        nightly_sync("b-7")
    (path,) = captured.files()
    fluxrun.shutdown()
    return path


def test_replay_prints_the_outcome_side_by_side(bundle, keys):
    result = runner.invoke(app, ["replay", str(bundle), "--key", str(keys.replay)])
    assert result.exit_code == 0, result.output
    assert "REPRODUCED" in result.output
    assert "recorded: builtins:LookupError: batch b-7 not found" in result.output
    assert "now:      builtins:LookupError: batch b-7 not found" in result.output


def test_replay_expect_sets_the_exit_status(bundle, keys):
    assert (
        runner.invoke(app, ["replay", str(bundle), "--key", str(keys.replay), "--expect", "reproduce"]).exit_code == 0
    )
    failed = runner.invoke(app, ["replay", str(bundle), "--key", str(keys.replay), "--expect", "fixed"])
    assert failed.exit_code == 1 and "expected the failure to be fixed, but it is reproduced" in failed.output
    FIXED["value"] = True
    assert runner.invoke(app, ["replay", str(bundle), "--key", str(keys.replay), "--expect", "fixed"]).exit_code == 0


def test_replay_without_a_key_says_what_to_set(bundle, monkeypatch):
    monkeypatch.delenv("FLUXRUN_REPLAY_KEY", raising=False)
    result = runner.invoke(app, ["replay", str(bundle)])
    assert result.exit_code == 1 and "FLUXRUN_REPLAY_KEY" in result.output and "Traceback" not in result.output


def test_export_test_writes_a_readable_test_that_pytest_runs(bundle, keys, tmp_path):
    out = tmp_path / "test_exported.py"
    exported = ["export-test", str(bundle), "--key", str(keys.replay), "--out", str(out)]
    result = runner.invoke(app, [*exported, "--expect", "reproduce"])
    assert result.exit_code == 0, result.output
    source = out.read_text()
    assert "@fluxrun.replay(BUNDLE, expect='reproduce')" in source
    assert "# recorded: builtins:LookupError: batch b-7 not found" in source
    assert runner.invoke(app, exported).exit_code == 1  # never overwrites
    env = {**os.environ, "FLUXRUN_REPLAY_KEY": str(keys.replay), "PYTHONPATH": str(Path(__file__).parent)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(out)],
        cwd=Path.cwd(),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "1 passed" in run.stdout, run.stdout + run.stderr
