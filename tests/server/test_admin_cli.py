"""`fluxrun server admin ...`: each operation through the CLI, with clear errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fluxrun.bundle import load_capture_key, signing_public_key


def admin(data_dir, *args):
    return subprocess.run(
        [sys.executable, "-m", "fluxrun.cli.app", "server", "admin", *args],
        env={**os.environ, "FLUXRUN_SERVER_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_admin_operations_and_their_errors(tmp_path, keys):
    data = tmp_path / "data"
    assert admin(data, "create-workspace", "acme").returncode == 0
    again = admin(data, "create-workspace", "acme")
    assert again.returncode == 1 and "already exists" in again.stderr and "Traceback" not in again.stderr
    assert "created project acme/shop" in admin(data, "create-project", "acme", "shop").stdout
    missing = admin(data, "create-project", "nope", "shop")
    assert missing.returncode == 1 and "create-workspace nope" in missing.stderr
    token = admin(data, "create-token", "acme/shop")
    assert token.stdout.strip().startswith("frt_") and "shown only this once" in token.stderr
    key_id, public = signing_public_key(load_capture_key(keys.capture))
    assert f"registered signing key {key_id}" in admin(data, "add-key", "acme/shop", f"{key_id}:{public}").stdout
    bad = admin(data, "add-key", "acme/shop", "not-a-key")
    assert bad.returncode == 1 and "error:" in bad.stderr
    assert "revoked signing key" in admin(data, "revoke-key", "acme/shop", key_id).stdout
    api_key = admin(data, "create-api-key", "acme", "ci", "--role", "viewer").stdout.strip()
    assert api_key.startswith("fra_")
    assert admin(data, "create-api-key", "acme", "x", "--role", "god").returncode == 1
    assert "revoked API key" in admin(data, "revoke-api-key", api_key[:12]).stdout
    assert "revoked ingest token" in admin(data, "revoke-token", token.stdout.strip()[:12]).stdout


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FLUXRUN_SERVER_PORT": "not-a-port"}, "invalid server settings"),
        ({"FLUXRUN_SERVER_DATABASE_URL": "postgres://x@y/z"}, "postgresql+psycopg://"),
    ],
)
def test_bad_settings_are_refused_with_a_message(tmp_path, env, message):
    result = subprocess.run(
        [sys.executable, "-m", "fluxrun.cli.app", "server"],
        env={**os.environ, "FLUXRUN_SERVER_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr
