"""Management GraphQL: every operation under every role, workspace isolation, the audit log, and that what
GraphQL mints or revokes takes effect on ingest. On SQLite and on PostgreSQL."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from control_helpers import BACKENDS, GraphQLFailed, Server, project_ids, provision, wait_until

from fluxrun.bundle import generate_keys, load_capture_key, signing_public_key

ROLES = ["viewer", "member", "admin", "owner"]


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest, make_server: Any, keys: Any) -> Server:
    srv: Server = make_server(request.param, webhook_allow_private="true")  # rules here point at loopback
    provision(srv, keys.capture)
    srv.out("create-plan", "team", "--bundles-per-day", "100000", "--retention-days", "30")
    srv.start()
    return srv


@pytest.fixture(scope="module")
def ids(server: Server) -> dict[str, int]:
    return project_ids(server)


def fresh_public_key(tmp: Path) -> tuple[str, str]:
    folder = tmp / secrets.token_hex(4)
    folder.mkdir()
    capture, _ = generate_keys(folder)
    key_id, public = signing_public_key(load_capture_key(capture))
    return key_id, f"{key_id}:{public}"


# Each operation: (the least role allowed, setup run as owner -> arguments, the operation run as the role)
Op = tuple[str, Callable[[Server, dict[str, int], Path], dict[str, Any]], Callable[[Server, str, dict[str, Any]], Any]]


def _nothing(server: Server, ids: dict[str, int], tmp: Path) -> dict[str, Any]:
    return {"project": ids["shop"]}


def _owner_token(server: Server, ids: dict[str, int], tmp: Path) -> dict[str, Any]:
    data = server.gql("owner", "mutation($p: Int!) { createToken(projectId: $p) { prefix } }", p=ids["shop"])
    return {"prefix": data["createToken"]["prefix"]}


def _owner_key(server: Server, ids: dict[str, int], tmp: Path) -> dict[str, Any]:
    key_id, public = fresh_public_key(tmp)
    server.gql(
        "owner",
        "mutation($p: Int!, $k: String!) { registerSigningKey(projectId: $p, publicKey: $k) { keyId } }",
        p=ids["web"],
        k=public,
    )
    return {"project": ids["web"], "key_id": key_id, "new": fresh_public_key(tmp)[1], "fresh": public}


def _fresh_key(server: Server, ids: dict[str, int], tmp: Path) -> dict[str, Any]:
    return {"project": ids["web"], "public": fresh_public_key(tmp)[1]}


def _owner_api_key(server: Server, ids: dict[str, int], tmp: Path) -> dict[str, Any]:
    data = server.gql("owner", 'mutation { createApiKey(name: "temp", role: "viewer") { prefix } }')
    return {"prefix": data["createApiKey"]["prefix"]}


def _owner_member(server: Server, ids: dict[str, int], tmp: Path) -> dict[str, Any]:
    email = f"m{secrets.token_hex(4)}@corp.test"
    server.gql("owner", 'mutation($e: String!) { addMember(email: $e, role: "viewer") { email } }', e=email)
    return {"email": email}


def _owner_rule(server: Server, ids: dict[str, int], tmp: Path) -> dict[str, Any]:
    data = server.gql(
        "owner",
        'mutation($p: Int!) { createAlertRule(projectId: $p, kind: "new_issue", channel: "email", '
        'target: "ops@acme.test") { id } }',
        p=ids["web"],
    )
    return {"rule": data["createAlertRule"]["id"]}


OPERATIONS: dict[str, Op] = {
    "createProject": (
        "admin",
        _nothing,
        lambda s, k, a: s.gql(k, "mutation($n: String!) { createProject(name: $n) { id } }", n=secrets.token_hex(4)),
    ),
    "createToken": (
        "admin",  # the ingest trust anchor: minted by those who may revoke it (issue 16)
        _nothing,
        lambda s, k, a: s.gql(k, "mutation($p: Int!) { createToken(projectId: $p) { secret } }", p=a["project"]),
    ),
    "revokeToken": (
        "admin",
        _owner_token,
        lambda s, k, a: s.gql(k, "mutation($x: String!) { revokeToken(prefix: $x) { revokedAt } }", x=a["prefix"]),
    ),
    "registerSigningKey": (
        "admin",  # likewise
        _fresh_key,
        lambda s, k, a: s.gql(
            k,
            "mutation($p: Int!, $k: String!) { registerSigningKey(projectId: $p, publicKey: $k) { keyId } }",
            p=a["project"],
            k=a["public"],
        ),
    ),
    "rotateSigningKey": (
        "admin",
        _owner_key,
        lambda s, k, a: s.gql(
            k,
            "mutation($p: Int!, $k: String!, $o: String!) "
            "{ rotateSigningKey(projectId: $p, publicKey: $k, oldKeyId: $o) { keyId } }",
            p=a["project"],
            k=a["new"],
            o=a["key_id"],
        ),
    ),
    "revokeSigningKey": (
        "admin",
        _owner_key,
        lambda s, k, a: s.gql(
            k,
            "mutation($p: Int!, $o: String!) { revokeSigningKey(projectId: $p, keyId: $o) { revokedAt } }",
            p=a["project"],
            o=a["key_id"],
        ),
    ),
    "createApiKey": (
        "admin",
        _nothing,
        lambda s, k, a: s.gql(k, 'mutation { createApiKey(name: "ci", role: "viewer") { secret } }'),
    ),
    "revokeApiKey": (
        "admin",
        _owner_api_key,
        lambda s, k, a: s.gql(k, "mutation($x: String!) { revokeApiKey(prefix: $x) { revokedAt } }", x=a["prefix"]),
    ),
    "addMember": (
        "admin",
        _nothing,
        lambda s, k, a: s.gql(
            k,
            'mutation($e: String!) { addMember(email: $e, role: "viewer") { email } }',
            e=f"n{secrets.token_hex(4)}@corp.test",
        ),
    ),
    "changeMemberRole": (
        "admin",
        _owner_member,
        lambda s, k, a: s.gql(
            k, 'mutation($e: String!) { changeMemberRole(email: $e, role: "member") { role } }', e=a["email"]
        ),
    ),
    "removeMember": (
        "admin",
        _owner_member,
        lambda s, k, a: s.gql(k, "mutation($e: String!) { removeMember(email: $e) { email } }", e=a["email"]),
    ),
    "setProjectPlan": (
        "owner",
        _nothing,
        lambda s, k, a: s.gql(
            k, 'mutation($p: Int!) { setProjectPlan(projectId: $p, plan: "team") { name } }', p=a["project"]
        ),
    ),
    "createAlertRule": (
        "member",
        _nothing,
        lambda s, k, a: s.gql(
            k,
            'mutation($p: Int!) { createAlertRule(projectId: $p, kind: "spike", channel: "webhook", '
            'target: "http://127.0.0.1:9/hook", threshold: 10) { id } }',
            p=a["project"],
        ),
    ),
    "setAlertRuleEnabled": (
        "member",
        _owner_rule,
        lambda s, k, a: s.gql(
            k, "mutation($r: Int!) { setAlertRuleEnabled(id: $r, enabled: false) { enabled } }", r=a["rule"]
        ),
    ),
    "deleteAlertRule": (
        "member",
        _owner_rule,
        lambda s, k, a: s.gql(k, "mutation($r: Int!) { deleteAlertRule(id: $r) }", r=a["rule"]),
    ),
    "auditLog": ("admin", _nothing, lambda s, k, a: s.gql(k, "{ auditLog(limit: 5) { id action } }")),
    "deliveries": ("admin", _nothing, lambda s, k, a: s.gql(k, '{ deliveries(status: "dead") { id } }')),
    "me": ("viewer", _nothing, lambda s, k, a: s.gql(k, "{ me { role workspace { name } } }")),
    "projects": ("viewer", _nothing, lambda s, k, a: s.gql(k, "{ projects { id name plan { name } } }")),
    "tokens": (
        "viewer",
        _nothing,
        lambda s, k, a: s.gql(k, "query($p: Int) { tokens(projectId: $p) { prefix } }", p=a["project"]),
    ),
    "signingKeys": (
        "viewer",
        _nothing,
        lambda s, k, a: s.gql(k, "query($p: Int!) { signingKeys(projectId: $p) { keyId } }", p=a["project"]),
    ),
    "apiKeys": ("viewer", _nothing, lambda s, k, a: s.gql(k, "{ apiKeys { prefix role } }")),
    "members": ("viewer", _nothing, lambda s, k, a: s.gql(k, "{ members { email role } }")),
    "plans": ("viewer", _nothing, lambda s, k, a: s.gql(k, "{ plans { name bundlesPerDay } }")),
    "alertRules": (
        "viewer",
        _nothing,
        lambda s, k, a: s.gql(k, "query($p: Int!) { alertRules(projectId: $p) { id } }", p=a["project"]),
    ),
    "usage": (
        "viewer",
        _nothing,
        lambda s, k, a: s.gql(k, "query($p: Int!) { usage(projectId: $p) { day accepted } }", p=a["project"]),
    ),
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_each_operation_is_authorised_by_role(
    server: Server, ids: dict[str, int], tmp_path: Path, operation: str, role: str
) -> None:
    least, setup, run = OPERATIONS[operation]
    arguments = setup(server, ids, tmp_path)
    if ROLES.index(role) >= ROLES.index(least):
        data = run(server, role, arguments)
        assert data, f"{operation} as {role} returned nothing"
    else:
        with pytest.raises(GraphQLFailed) as failed:
            run(server, role, arguments)
        assert failed.value.code == "FORBIDDEN"
        assert f"needs the {least} role" in str(failed.value) and f"role is {role}" in str(failed.value)


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_nothing_in_one_workspace_is_reachable_from_another(
    server: Server, ids: dict[str, int], tmp_path: Path, operation: str
) -> None:
    """The other workspace's owner aims every operation at acme's objects: not found, or nothing of acme's."""
    _least, setup, run = OPERATIONS[operation]
    arguments = setup(server, ids, tmp_path)
    try:
        data = run(server, "other_owner", arguments)
    except GraphQLFailed as failed:
        assert failed.code == "NOT_FOUND", f"{operation}: {failed}"
        return
    # operations without an acme id in them act on the caller's own workspace
    text = repr(data)
    assert "acme" not in text and "shop" not in text and "owner-key" not in text
    assert arguments.get("prefix", "no-prefix") not in text


def test_cross_workspace_lists_and_audit(server: Server, ids: dict[str, int]) -> None:
    mine = server.gql("other_owner", "{ projects { name } tokens { prefix } apiKeys { name } auditLog { target } }")
    names = {p["name"] for p in mine["projects"]}
    assert "app" in names and not names & {"shop", "web"}
    acme_tokens = {t["prefix"] for t in server.gql("owner", "{ tokens { prefix } }")["tokens"]}
    assert acme_tokens and not acme_tokens & {t["prefix"] for t in mine["tokens"]}
    keys = {k["name"] for k in mine["apiKeys"]}
    assert "their-owner" in keys and not keys & {"owner-key", "admin-key", "member-key", "viewer-key"}
    assert all("acme" not in repr(entry) for entry in mine["auditLog"])
    with pytest.raises(GraphQLFailed, match="no project"):
        server.gql("other_owner", "query($p: Int!) { usage(projectId: $p) { day } }", p=ids["shop"])
    # the REST usage endpoint is scoped the same way
    assert server.api("other_owner", "/v1/usage", project_id=ids["shop"]).status_code == 404


def test_audit_log_records_who_what_when_from_where(server: Server, ids: dict[str, int]) -> None:
    server.gql("admin", 'mutation { addMember(email: "audited@acme.test", role: "member") { email } }')
    me = server.gql("admin", "{ me { keyPrefix } }")["me"]
    entries = server.gql("owner", "{ auditLog(limit: 50) { actor role action target detail source createdAt } }")
    entry = next(e for e in entries["auditLog"] if e["target"] == "member:audited@acme.test")
    assert entry["actor"] == f"apikey:{me['keyPrefix']}" and entry["role"] == "admin"
    assert entry["action"] == "member.add" and entry["detail"] == {"role": "member"}
    assert entry["source"] == "127.0.0.1" and entry["createdAt"]
    # the CLI's changes are in the same log, named as the operator
    assert any(e["actor"].startswith("cli:") and e["action"] == "token.create" for e in entries["auditLog"]) or any(
        e["actor"].startswith("cli:") for e in server.gql("owner", "{ auditLog(limit: 1000) { actor } }")["auditLog"]
    )
    # paging backwards by id
    first = entries["auditLog"][0]["createdAt"]
    assert first


def test_roles_cannot_be_escalated_and_the_last_owner_stays(server: Server) -> None:
    for query in (
        'mutation { createApiKey(name: "x", role: "owner") { prefix } }',
        'mutation { addMember(email: "boss@acme.test", role: "owner") { email } }',
    ):
        with pytest.raises(GraphQLFailed) as failed:
            server.gql("admin", query)
        assert failed.value.code == "FORBIDDEN"
    owner_key_prefix = server.gql("owner", "{ me { keyPrefix } }")["me"]["keyPrefix"]
    with pytest.raises(GraphQLFailed, match="role owner"):
        server.gql("admin", "mutation($x: String!) { revokeApiKey(prefix: $x) { prefix } }", x=owner_key_prefix)
    server.gql("owner", 'mutation { addMember(email: "founder@acme.test", role: "owner") { email } }')
    with pytest.raises(GraphQLFailed, match="last owner"):
        server.gql("owner", 'mutation { changeMemberRole(email: "founder@acme.test", role: "admin") { role } }')
    with pytest.raises(GraphQLFailed, match="role 'god'"):
        server.gql("owner", 'mutation { addMember(email: "x@acme.test", role: "god") { email } }')


def test_webhook_secrets_are_for_admins_only(server: Server, ids: dict[str, int]) -> None:
    made = server.gql(
        "member",
        'mutation($p: Int!) { createAlertRule(projectId: $p, kind: "new_issue", channel: "webhook", '
        'target: "http://127.0.0.1:9/x") { id secret } }',
        p=ids["shop"],
    )["createAlertRule"]
    assert made["secret"] is None  # the member who made it does not see it
    rules = {
        r["id"]: r
        for r in server.gql("admin", "query($p: Int!) { alertRules(projectId: $p) { id secret } }", p=ids["shop"])[
            "alertRules"
        ]
    }
    assert len(rules[made["id"]]["secret"]) >= 40


def test_bad_input_is_explained(server: Server, ids: dict[str, int]) -> None:
    cases = [
        (
            'mutation($p: Int!) { createAlertRule(projectId: $p, kind: "often", channel: "email", target: "a@b") '
            "{ id } }",
            "alert kind 'often'",
        ),
        (
            'mutation($p: Int!) { createAlertRule(projectId: $p, kind: "spike", channel: "email", target: "a@b") '
            "{ id } }",
            "needs a threshold",
        ),
        (
            'mutation($p: Int!) { createAlertRule(projectId: $p, kind: "new_issue", channel: "webhook", '
            'target: "ftp://x") { id } }',
            "http:// or https://",
        ),
        ('mutation($p: Int!) { setProjectPlan(projectId: $p, plan: "gold") { name } }', "no plan 'gold'"),
        ('mutation($p: Int!) { registerSigningKey(projectId: $p, publicKey: "nonsense") { keyId } }', ""),
    ]
    for query, message in cases:
        with pytest.raises(GraphQLFailed) as failed:
            server.gql("owner", query, p=ids["shop"])
        assert message in str(failed.value)
        assert failed.value.code in ("BAD_REQUEST", "NOT_FOUND")


def test_credentials_are_required(server: Server) -> None:
    query = {"query": "{ me { role } }"}
    assert httpx.post(server.url + "/v1/graphql", json=query).status_code == 401
    response = httpx.post(
        server.url + "/v1/graphql", json=query, headers={"authorization": f"Bearer {server.keys['ingest']}"}
    )
    assert response.status_code == 401 and "API key" in response.text


def test_tokens_minted_and_revoked_through_graphql_take_effect(server: Server, ids: dict[str, int], seal: Any) -> None:
    issued = server.gql("admin", "mutation($p: Int!) { createToken(projectId: $p) { secret prefix } }", p=ids["shop"])
    token = issued["createToken"]["secret"]
    assert server.ingest(token, [seal()[1]]).status_code == 202
    listed = server.gql("viewer", "query($x: String) { tokens(prefix: $x) { prefix revokedAt } }", x=token[:12])
    assert listed["tokens"] == [{"prefix": token[:12], "revokedAt": None}]
    server.gql("admin", "mutation($x: String!) { revokeToken(prefix: $x) { prefix } }", x=token[:12])
    assert wait_until(lambda: server.ingest(token, [seal()[1]]).status_code == 401, timeout=10)


def test_member_keys_follow_their_member(server: Server) -> None:
    email = f"dev{secrets.token_hex(3)}@corp.test"
    server.gql("owner", 'mutation($e: String!) { addMember(email: $e, role: "admin") { email } }', e=email)
    with pytest.raises(GraphQLFailed, match="cannot be owner"):
        server.gql(
            "owner", 'mutation($e: String!) { createApiKey(name: "x", role: "owner", member: $e) { prefix } }', e=email
        )
    with pytest.raises(GraphQLFailed, match="no member"):
        server.gql("owner", 'mutation { createApiKey(name: "x", member: "nobody@corp.test") { prefix } }')
    made = server.gql(
        "owner", 'mutation($e: String!) { createApiKey(name: "laptop", member: $e) { secret prefix } }', e=email
    )
    key = made["createApiKey"]["secret"]
    listed = {k["prefix"]: k for k in server.gql("viewer", "{ apiKeys { prefix role member } }")["apiKeys"]}
    assert listed[key[:12]] == {"prefix": key[:12], "role": "admin", "member": email}
    assert server.gql(key, "{ me { role } }")["me"]["role"] == "admin"

    server.gql("owner", 'mutation($e: String!) { changeMemberRole(email: $e, role: "viewer") { role } }', e=email)
    assert wait_until(lambda: server.gql(key, "{ me { role } }")["me"]["role"] == "viewer", timeout=10)
    with pytest.raises(GraphQLFailed) as failed:
        server.gql(key, 'mutation { createApiKey(name: "y", role: "viewer") { prefix } }')
    assert failed.value.code == "FORBIDDEN"

    server.gql("owner", "mutation($e: String!) { removeMember(email: $e) { email } }", e=email)

    def refused() -> bool:
        query = {"query": "{ me { role } }"}
        response = httpx.post(server.url + "/v1/graphql", json=query, headers={"authorization": f"Bearer {key}"})
        return response.status_code == 401

    assert wait_until(refused, timeout=10)
    log = server.gql("owner", "{ auditLog(limit: 20) { action target detail } }")["auditLog"]
    removal = next(e for e in log if e["action"] == "member.remove" and e["target"] == f"member:{email}")
    assert removal["detail"]["keys"] == [key[:12]]
