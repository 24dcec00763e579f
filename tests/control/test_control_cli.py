"""`fluxrun server admin ...`: the management operations from the CLI (as the server operator), each with
its audit entry and its errors. On SQLite and on PostgreSQL."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from control_helpers import BACKENDS
from postgres import create_database, drop_database
from typer.testing import CliRunner

from fluxrun.bundle import generate_keys, load_capture_key, signing_public_key
from fluxrun_server.cli import server_app


@pytest.fixture(params=BACKENDS)
def cli(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    env = {"FLUXRUN_SERVER_DATA_DIR": str(tmp_path / "data")}
    url = None
    if request.param == "postgres":
        url = create_database("fluxrun_cli")
        env["FLUXRUN_SERVER_DATABASE_URL"] = url
    runner = CliRunner()

    def run(*args: str, ok: bool = True) -> Any:
        result = runner.invoke(server_app, ["admin", *args], env=env)
        if ok:
            assert result.exit_code == 0, f"{args}: {result.output}{result.exception!r}"
        else:
            assert result.exit_code == 1, f"{args} should fail: {result.output}"
            assert "error:" in result.output and "Traceback" not in result.output
        return result

    yield run
    if url:
        drop_database(url)


def public_key(tmp: Path) -> tuple[str, str]:
    folder = tmp / secrets.token_hex(4)
    folder.mkdir()
    capture, _ = generate_keys(folder)
    key_id, public = signing_public_key(load_capture_key(capture))
    return key_id, f"{key_id}:{public}"


def as_json(result: Any) -> Any:
    return json.loads(result.stdout)


def test_every_cli_operation_and_its_audit_entry(cli: Any, tmp_path: Path) -> None:
    cli("create-workspace", "acme")
    cli("create-project", "acme", "shop")
    token = cli("create-token", "acme/shop").stdout.strip().splitlines()[0]
    assert token.startswith("frt_")
    listed = cli("list-tokens", "acme/shop").stdout
    assert token[:12] in listed and "active" in listed
    assert token[:12] in cli("list-tokens", "--prefix", token[:8]).stdout
    cli("revoke-token", token[:12])
    assert "revoked" in cli("list-tokens", "acme/shop").stdout

    old_id, old = public_key(tmp_path)
    new_id, new = public_key(tmp_path)
    cli("add-key", "acme/shop", old)
    assert f"{old_id} -> {new_id}" in cli("rotate-key", "acme/shop", old_id, new).stdout
    cli("rotate-key", "acme/shop", old_id, public_key(tmp_path)[1], ok=False)  # the old key is no longer active
    cli("revoke-key", "acme/shop", new_id)

    key = cli("create-api-key", "acme", "ci", "--role", "viewer").stdout.strip().splitlines()[0]
    cli("revoke-api-key", key[:12])

    cli("add-member", "acme", "Ada@Acme.test", "--role", "owner")
    cli("add-member", "acme", "bob@acme.test", "--role", "viewer")
    assert "bob@acme.test is now admin" in cli("set-role", "acme", "bob@acme.test", "admin").stdout
    cli("set-role", "acme", "ada@acme.test", "member", ok=False)  # the last owner
    ada_key = cli("create-api-key", "acme", "ada-laptop", "--member", "ada@acme.test").stdout.strip().splitlines()[0]
    assert ada_key.startswith("fra_")
    cli("create-api-key", "acme", "x", "--member", "nobody@acme.test", ok=False)
    members = cli("members", "acme").stdout
    assert "ada@acme.test  owner" in members and "bob@acme.test  admin" in members
    cli("remove-member", "acme", "bob@acme.test")
    cli("remove-member", "acme", "bob@acme.test", ok=False)

    cli("create-plan", "free", "--bundles-per-day", "1000", "--retention-days", "7", "--rate", "5")
    cli("create-plan", "bad", "--bundles-per-day", "0", ok=False)
    plans = as_json(cli("plans"))
    assert plans[0]["name"] == "free" and plans[0]["bundles_per_day"] == 1000 and plans[0]["rate_per_second"] == 5
    assert "is on plan free" in cli("set-plan", "acme/shop", "free").stdout
    cli("set-plan", "acme/shop", "gold", ok=False)

    # a public address (a name would be resolved when the rule is made); nothing is sent here
    rule = cli("add-alert-rule", "acme/shop", "new_issue", "webhook", "https://93.184.216.34/fluxrun").stdout
    assert "webhook secret " in rule
    rule_id = rule.split(":")[0].split()[-1]
    cli("add-alert-rule", "acme/shop", "spike", "email", "ops@acme.test", "--threshold", "50")
    cli("add-alert-rule", "acme/shop", "spike", "email", "ops@acme.test", ok=False)  # no threshold
    rules = as_json(cli("alert-rules", "acme/shop"))
    assert [r["kind"] for r in rules] == ["new_issue", "spike"] and "secret" not in rules[0]
    cli("delete-alert-rule", rule_id)
    assert [r["kind"] for r in as_json(cli("alert-rules", "acme/shop"))] == ["spike"]

    assert as_json(cli("dead-letters")) == []
    assert as_json(cli("dead-letters", "acme/shop", "--status", "pending")) == []
    cli("retry-delivery", "12345", ok=False)
    assert as_json(cli("usage", "acme/shop")) == []
    cli("usage", "acme/shop", "--since", "yesterday", ok=False)

    entries = as_json(cli("audit", "acme", "--limit", "100"))
    actions = [e["action"] for e in entries]
    for action in (
        "project.create",
        "token.create",
        "token.revoke",
        "signing_key.register",
        "signing_key.rotate",
        "signing_key.revoke",
        "api_key.create",
        "api_key.revoke",
        "member.add",
        "member.role",
        "member.remove",
        "project.plan",
        "alert_rule.create",
        "alert_rule.delete",
    ):
        assert action in actions, f"no audit entry for {action}: {actions}"
    assert all(e["actor"].startswith("cli:") and e["role"] == "operator" and e["source"] == "cli" for e in entries)
    assert entries[0]["id"] > entries[-1]["id"]  # newest first
    everything = as_json(cli("audit"))
    assert any(e["action"] == "plan.create" for e in everything)  # plans belong to no workspace
    assert any(e["action"] == "workspace.create" for e in everything)
