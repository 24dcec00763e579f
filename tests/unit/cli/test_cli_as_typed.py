"""The `fluxrun` command as a user types it (the installed console script in a fresh process): what it
prints when a replay runs, when a flag is mistyped, when a file or key is missing or is not what it seems."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

FLUXRUN = str(Path(sys.executable).with_name("fluxrun"))

# An app that sets FluxRun up at import, from the environment, as the README tells apps to.
NIGHTLY = """
import fluxrun

fluxrun.init()


@fluxrun.capture
def nightly_sync(batch):
    raise LookupError(f"batch {batch} not found")
"""


def fluxrun(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLUXRUN_")}
    return subprocess.run(
        [FLUXRUN, *args],
        cwd=cwd,
        env={**base, "PYTHONPATH": str(cwd), "COLUMNS": "200", **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, keys) -> Path:
    """A folder with nightly.py and one bundle of its failure (captured in its own process, from the env)."""
    folder = tmp_path_factory.mktemp("nightly")
    (folder / "nightly.py").write_text(textwrap.dedent(NIGHTLY))
    capture = "import nightly, fluxrun\ntry:\n    nightly.nightly_sync('b-7')\nexcept LookupError:\n    pass\n"
    capture += "fluxrun.shutdown()\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXRUN_")}
    env.update(FLUXRUN_CAPTURE_KEY=str(keys.capture), FLUXRUN_DIR=str(folder / "bundles"), PYTHONPATH=str(folder))
    subprocess.run([sys.executable, "-c", capture], cwd=folder, env=env, check=True, timeout=120)
    (bundle,) = (folder / "bundles").glob("*.fluxrun")
    bundle.rename(folder / "nightly.fluxrun")
    return folder


def test_a_replay_prints_no_capture_warning(project, keys):
    result = fluxrun("replay", "nightly.fluxrun", "--key", str(keys.replay), cwd=project)
    assert result.returncode == 0, result.stderr
    assert "REPRODUCED" in result.stdout
    assert "capture key" not in result.stdout + result.stderr
    assert "FluxRun" not in result.stderr, result.stderr


def test_a_replay_through_the_library_in_a_child_prints_no_capture_warning(project, keys):
    """What the agent does: `fluxrun.replay.run` with isolation on imports the app in the child."""
    script = (
        "import logging, fluxrun.replay\n"
        "logging.basicConfig(level=logging.INFO)  # as the agent's server logs\n"
        f"result = fluxrun.replay.run('nightly.fluxrun', {str(keys.replay)!r}, isolate=True)\n"
        "print(result.outcome)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXRUN_")}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=project, env={**env, "PYTHONPATH": str(project)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "reproduced", done.stdout + done.stderr
    assert "capture key" not in done.stderr, done.stderr


@pytest.mark.parametrize(("word", "status"), [("reproduced", 0), ("reproduce", 0), ("fixed", 1)])
def test_expect_takes_the_outcome_words(project, keys, word, status):
    result = fluxrun("replay", "nightly.fluxrun", "--key", str(keys.replay), "--expect", word, cwd=project)
    assert result.returncode == status, result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_expect_names_the_words_it_takes(project, keys):
    result = fluxrun("replay", "nightly.fluxrun", "--key", str(keys.replay), "--expect", "broken", cwd=project)
    assert result.returncode == 1
    assert "--expect 'broken': use fixed or reproduced" in result.stderr


def test_export_test_takes_the_outcome_word_and_writes_a_test_pytest_runs(project, keys, tmp_path):
    out = tmp_path / "test_nightly.py"
    written = fluxrun(
        "export-test", "nightly.fluxrun", "--key", str(keys.replay), "--expect", "reproduced", "--out", str(out),
        cwd=project,
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    assert "expect='reproduce'" in out.read_text()


def test_a_missing_key_names_the_flag(project):
    result = fluxrun("replay", "nightly.fluxrun", cwd=project)
    assert result.returncode == 1
    assert "--key path/to/replay.key" in result.stderr and "FLUXRUN_REPLAY_KEY" in result.stderr
    assert "key=" not in result.stderr


def test_a_missing_bundle_reads_the_same_in_every_command(project, keys):
    lines = {
        command[0]: fluxrun(*command, "missing.fluxrun", "--key", str(keys.replay), cwd=project)
        for command in (["replay"], ["bundle", "inspect"], ["export-test"])
    }
    for result in lines.values():
        assert result.returncode == 1 and "Traceback" not in result.stderr
    messages = {result.stderr.strip() for result in lines.values()}
    assert messages == {"error: no bundle at missing.fluxrun (check the path, or fetch it with `fluxrun pull`)"}


def test_a_path_with_brackets_is_printed_as_it_is(project, keys):
    """Error messages quote data (a path here): printed as text, never read as rich markup or emoji codes."""
    result = fluxrun("bundle", "inspect", "runs/[/]:boom:.fluxrun", "--key", str(keys.replay), cwd=project)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "error: no bundle at runs/[/]:boom:.fluxrun (check the path, or fetch it with `fluxrun pull`)"
    )


def test_a_folder_given_as_the_bundle_says_so(project, keys):
    result = fluxrun("bundle", "inspect", ".", cwd=project)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: . is a folder, not a bundle file"


@pytest.mark.parametrize(
    "command", [[], ["replay"], ["bundle", "inspect"], ["demo"], ["server", "admin", "create-api-key"]]
)
def test_help_shows_no_type_label_on_flags(project, command):
    result = fluxrun(*command, "--help", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "--help" in result.stdout
    assert "<bool>" not in result.stdout, result.stdout


def test_help_still_labels_the_options_that_take_a_value(project):
    result = fluxrun("replay", "--help", cwd=project)
    assert "<path>" in result.stdout and "--key" in result.stdout


def test_a_python_file_as_the_key_is_called_what_it_is_not_told_to_chmod(project):
    source = project / "nightly.py"
    source.chmod(0o644)
    result = fluxrun("replay", "nightly.fluxrun", "--key", "nightly.py", cwd=project)
    assert result.returncode == 1
    assert "nightly.py is not a FluxRun key file" in result.stderr
    assert "chmod" not in result.stdout + result.stderr


def test_a_real_key_left_readable_is_still_told_to_chmod(project, keys, tmp_path):
    exposed = tmp_path / "replay.key"
    exposed.write_bytes(keys.replay.read_bytes())
    exposed.chmod(0o644)
    result = fluxrun("replay", "nightly.fluxrun", "--key", str(exposed), cwd=project)
    assert result.returncode == 0, result.stderr
    assert f"chmod 600 {exposed}" in result.stderr
