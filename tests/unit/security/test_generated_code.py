"""`fluxrun export-test` writes code from bundle text: that text must stay data.

A member who registers their own signing key on the server can plant a run whose id, route and message
are Python. The generated test file carries them only as string literals (or escaped inside its docstring
and comments), and export-test refuses any bundle whose signature the replay key does not vouch for.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import subprocess
import sys
import tokenize
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fluxrun.bundle import CaptureKey, Sealer, generate_keys, load_capture_key
from fluxrun.cli import app

runner = CliRunner()


def _hostile(marker: Path) -> dict[str, str]:
    """Values that break out of a string, a docstring or a comment line, each trying to create `marker`."""
    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "bundle_id": f'x\'"""\n{code}\n"""\\',
        "route": f"/a\n{code}\n#\r{code}\r\n'''\"\"\"\\",
        "method": f"POST\n{code}\n",
        "message": f'boom"""\r{code}\n"""\n{code}\n\u2028\x00\x1b{code}',
        "error_type": f"builtins:Evil\n{code}\n",
        "started_at": f'2025-01-01T00:00:00Z"""\n{code}\n',
    }


def _seal(key: CaptureKey, values: dict[str, str]) -> bytes:
    summary: dict[str, Any] = {
        "bundle_id": values["bundle_id"],
        "execution": "asgi",
        "entry": "shop:app",
        "started_at": values["started_at"],
        "method": values["method"],
        "route": values["route"],
        "status": 500,
        "outcome": "error",
        "error": {"type": values["error_type"], "message": values["message"]},
        "fingerprint": "0123456789abcdef",
    }
    payload = {"format": 1, "bundle_id": values["bundle_id"], "events": []}
    return Sealer(key, sdk="tests").seal(summary=summary, payload=payload, bundle_id=values["bundle_id"])


@pytest.fixture
def hostile_bundle(tmp_path: Path, keys: Any) -> tuple[Path, dict[str, str], Path]:
    marker = tmp_path / "pwned"
    values = _hostile(marker)
    path = tmp_path / "hostile.fluxrun"
    path.write_bytes(_seal(load_capture_key(keys.capture), values))
    return path, values, marker


def _comments(source: str) -> list[str]:
    lines = iter(source.splitlines(keepends=True))
    return [t.string for t in tokenize.generate_tokens(lambda: next(lines, "")) if t.type == tokenize.COMMENT]


def test_exported_test_carries_hostile_bundle_text_only_as_data(
    hostile_bundle: tuple[Path, dict[str, str], Path], keys: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle, values, marker = hostile_bundle
    monkeypatch.setenv("FLUXRUN_REPLAY_KEY", str(keys.replay))
    out = tmp_path / "test_exported.py"
    for expect in ("fixed", "reproduce"):
        out.unlink(missing_ok=True)
        result = runner.invoke(app, ["export-test", str(bundle), "--out", str(out), "--expect", expect])
        assert result.exit_code == 0, result.output
        source = out.read_text()
        assert not marker.exists()

        tree = ast.parse(source)  # a SyntaxError here is a break-out too
        docstring, imported, assigned, *tests = tree.body
        assert isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant)
        text = docstring.value.value
        for field in ("bundle_id", "route", "message", "started_at"):
            assert values[field] in text, f"the docstring does not carry the {field} verbatim"
        assert isinstance(imported, ast.Import) and [a.name for a in imported.names] == ["fluxrun"]
        assert isinstance(assigned, ast.Assign) and ast.unparse(assigned.targets[0]) == "BUNDLE"
        assert isinstance(assigned.value, ast.Constant) and assigned.value.value == os.path.relpath(bundle.resolve())
        assert tests and all(isinstance(t, ast.FunctionDef) for t in tests)
        for test in tests:
            assert re.fullmatch(r"test_[a-z0-9_]+", test.name), test.name  # type: ignore[attr-defined]
            assert all(isinstance(s, ast.Assert) for s in test.body), ast.dump(test)  # type: ignore[attr-defined]
            for node in ast.walk(test):
                assert not isinstance(node, ast.Call) or ast.unparse(node.func) == "fluxrun.replay"
        for comment in _comments(source):
            assert "\r" not in comment and "\n" not in comment and comment.isascii()

        # Importing the module (what pytest does when it collects it) runs nothing the bundle wrote.
        importer = (
            "import importlib.util, sys\n"
            "spec = importlib.util.spec_from_file_location('exported', sys.argv[1])\n"
            "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", importer, str(out)], capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr
        assert not marker.exists(), "importing the exported test ran code from the bundle"


def test_export_test_refuses_a_bundle_changed_after_sealing(
    tmp_path: Path, keys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLUXRUN_REPLAY_KEY", raising=False)
    values = _hostile(tmp_path / "unused")
    values.update(route="/checkout", bundle_id="abc123", method="POST", message="boom", error_type="builtins:E")
    sealed = _seal(load_capture_key(keys.capture), values)
    tampered = tmp_path / "tampered.fluxrun"
    tampered.write_bytes(sealed.replace(b'"/checkout"', b'"/checkoux"', 1))
    assert tampered.read_bytes() != sealed
    out = tmp_path / "test_tampered.py"
    result = runner.invoke(app, ["export-test", str(tampered), "--out", str(out), "--key", str(keys.replay)])
    assert result.exit_code == 1
    assert "changed after it was sealed" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_export_test_refuses_a_bundle_signed_by_a_key_the_replay_key_does_not_hold(
    tmp_path: Path, keys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack: a member registers their own signing key with the server and seals for the app's recipient."""
    own_capture, _ = generate_keys(tmp_path / "attacker")
    victim = load_capture_key(keys.capture)
    attacker = load_capture_key(own_capture)
    forged = dataclasses.replace(
        victim, signing_key_id=attacker.signing_key_id, signing_private=attacker.signing_private
    )
    bundle = tmp_path / "forged.fluxrun"
    bundle.write_bytes(_seal(forged, _hostile(tmp_path / "pwned")))
    out = tmp_path / "test_forged.py"
    monkeypatch.setenv("FLUXRUN_REPLAY_KEY", str(keys.replay))
    result = runner.invoke(app, ["export-test", str(bundle), "--out", str(out)])
    assert result.exit_code == 1
    assert attacker.signing_key_id in result.output and "not a known signing key" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_export_test_without_a_replay_key_says_what_to_pass(
    hostile_bundle: tuple[Path, dict[str, str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLUXRUN_REPLAY_KEY", raising=False)
    out = tmp_path / "test_unverified.py"
    result = runner.invoke(app, ["export-test", str(hostile_bundle[0]), "--out", str(out)])
    assert result.exit_code == 1
    assert "--key" in result.output and "FLUXRUN_REPLAY_KEY" in result.output and "Traceback" not in result.output
    assert not out.exists()
