"""The `fluxrun` command line: keys, bundle inspection, and clear one-line errors."""

from __future__ import annotations

import stat

import pytest
from typer.testing import CliRunner

import fluxrun
from fluxrun.bundle import load_capture_key, parse_public_signing_key
from fluxrun.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_keys_generate_writes_both_files_with_mode_0600(tmp_path):
    result = run("keys", "generate", str(tmp_path / "keys"))
    assert result.exit_code == 0, result.output
    for name in ("capture.key", "replay.key"):
        path = tmp_path / "keys" / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert f"wrote {path}" in result.output
    assert "FLUXRUN_CAPTURE_KEY=" in result.output


def test_keys_generate_refuses_to_overwrite_without_force(tmp_path):
    assert run("keys", "generate", str(tmp_path)).exit_code == 0
    result = run("keys", "generate", str(tmp_path))
    assert result.exit_code == 1
    assert "error:" in result.output and "--force" in result.output and "Traceback" not in result.output
    assert run("keys", "generate", str(tmp_path), "--force").exit_code == 0


def test_keys_public_prints_the_signing_key_to_register(keys):
    result = run("keys", "public", str(keys.capture))
    assert result.exit_code == 0
    key_id, _ = parse_public_signing_key(result.output.strip())
    assert key_id == load_capture_key(keys.capture).signing_key_id


@pytest.fixture
def failing_bundle(captured):
    @fluxrun.boundary("payments.charge")
    def charge(card: str) -> dict:
        return {"status": "declined", "card": card}

    @fluxrun.capture
    def checkout(card: str):
        result = charge(card)
        raise RuntimeError(f"payment {result['status']} for card {card}")

    with pytest.raises(RuntimeError):
        checkout("4111 1111 1111 1111")
    (path,) = captured.files()
    return path


def test_inspect_without_a_key_shows_the_summary_and_event_index(failing_bundle):
    result = run("bundle", "inspect", str(failing_bundle))
    assert result.exit_code == 0, result.output
    assert "RuntimeError" in result.output and "signature not verified" in result.output
    assert "payments.charge" in result.output
    assert "4111 1111 1111 1111" not in result.output  # the summary's message was scrubbed


def test_inspect_with_the_key_shows_the_decrypted_timeline_masked(failing_bundle, keys):
    result = run("bundle", "inspect", str(failing_bundle), "--key", str(keys.replay))
    assert result.exit_code == 0, result.output
    assert "signature verified" in result.output and "Event timeline" in result.output
    assert "declined" in result.output
    assert "4111 1111 1111 1111" not in result.output
    shown = run("bundle", "inspect", str(failing_bundle), "--key", str(keys.replay), "--show-secrets")
    assert "4111 1111 1111 1111" in shown.output


def test_inspect_json(failing_bundle, keys):
    result = run("bundle", "inspect", str(failing_bundle), "--key", str(keys.replay), "--json")
    assert result.exit_code == 0
    assert '"payload"' in result.output and '"summary"' in result.output


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p, k: (p.write_bytes(p.read_bytes()[:40]), k.replay)[1], "truncated"),
        (lambda p, k: k.capture, "capture key"),
        (lambda p, k: p.parent / "missing.key", "missing.key"),
    ],
)
def test_inspect_errors_are_one_clear_line(failing_bundle, keys, make, message):
    key = make(failing_bundle, keys)
    result = run("bundle", "inspect", str(failing_bundle), "--key", str(key))
    assert result.exit_code == 1
    assert ("error:" in result.output and message in result.output.lower()) or message in result.output
    assert "Traceback" not in result.output


def test_inspect_a_missing_file(tmp_path):
    result = run("bundle", "inspect", str(tmp_path / "nope.fluxrun"))
    assert result.exit_code == 1
    assert "nope.fluxrun" in result.output and "Traceback" not in result.output
