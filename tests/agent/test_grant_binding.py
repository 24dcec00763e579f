"""Grants bind content and stay single use under attack (issue 13, item 4).

A grant names the bundle's SHA-256, so other bytes carrying the granted id do not open; a used grant stays
used after unauthenticated refusals flood the agent and it restarts; refusals are rate limited and their
audit lines bounded; and Chrome's Private Network Access preflight from the dashboard gets a 2xx answer.

The swapped bundle and the preflight go through the real server and `fluxrun agent` processes of conftest;
the flood, rate limit and audit bounds use the agent's ASGI app in this process (a restart is a new app
over the same folder), signing grants with a grant key of the test's own.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.testclient import TestClient

from fluxrun.agent.app import build_app
from fluxrun.agent.audit import AuditLog
from fluxrun.agent.config import resolve_config
from fluxrun.agent.grant import GRANT_VERSION, sign_grant
from fluxrun_server import grants as server_grants

pytestmark = pytest.mark.slow

DASHBOARD = "http://dashboard.test:5173"  # FLUXRUN_AGENT_ORIGIN of conftest's agent

MAX_AUDIT_LINE = 2048


def claims_of(grant: str) -> dict[str, Any]:
    body = grant.partition(".")[0]
    return orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def web_payload(bundle_id: str, marker: str) -> dict[str, Any]:
    """A small web-shaped payload that carries `marker` (conftest's agent fixtures seal it as the app would)."""
    body = orjson.dumps({"note": marker}).decode()
    return {
        "format": 1,
        "bundle_id": bundle_id,
        "execution": "asgi",
        "entry": "shop:app",
        "started_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "request": {
            "method": "POST",
            "path": "/notes",
            "query_string": "",
            "scheme": "http",
            "http_version": "1.1",
            "headers": [["host", "shop.test"], ["content-type", "application/json"]],
            "route": "/notes",
            "body": {"size": len(body), "text": body},
        },
        "events": [],
        "outcome": {
            "kind": "error",
            "status": 500,
            "error": {"type": "builtins:KeyError", "message": "'note'", "frames": [], "fingerprint": "fp-binding"},
        },
        "sdk": {"name": "tests", "version": "0"},
        "release": "1.0.0",
        "environment": "test",
    }


def audit_lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines() if line.strip()]


# --- a swapped bundle (real server and agent) -----------------------------------------------------------


def test_a_swapped_bundle_under_a_valid_grant_is_refused(server, agent, seal_payload):
    """Same bundle id, other bytes: the real bundle is ingested and granted, another one sealed with its id."""
    bundle_id = secrets.token_hex(16)
    server.ingest(seal_payload(web_payload(bundle_id, "THE-REAL-RUN")))
    real = server.bundle(bundle_id)
    swapped = seal_payload(web_payload(bundle_id, "A-SWAPPED-RUN"))  # signed with the app's key, same id
    assert swapped != real

    response = server.grant(bundle_id)
    assert response.status_code == 200, response.text
    grant = response.json()["grant"]
    assert claims_of(grant)["bundle_sha256"] == hashlib.sha256(real).hexdigest()

    refused = agent.post("unlock", grant, swapped)
    assert refused.status_code == 403, refused.text
    assert refused.json()["reason"] == "wrong_bundle"
    assert "SHA-256" in refused.json()["detail"] and "A-SWAPPED-RUN" not in refused.text
    [entry] = agent.audit(claims_of(grant)["nonce"])
    assert entry["result"] == "refused" and entry["reason"] == "wrong_bundle" and entry["grant_verified"] is True
    assert entry["posted_sha256"] == hashlib.sha256(swapped).hexdigest()

    allowed = agent.post("unlock", grant, real)  # the refusal did not use the grant up
    assert allowed.status_code == 200 and "THE-REAL-RUN" in allowed.text


# --- Private Network Access (real agent) ----------------------------------------------------------------


def test_a_private_network_preflight_from_the_dashboard_succeeds(agent):
    """What Chrome sends before a page on the internet may POST JSON to an agent on loopback."""
    preflight = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type",
        "access-control-request-private-network": "true",
    }
    for path in ("/v1/unlock", "/v1/replay", "/v1/health"):
        answer = httpx.options(f"{agent.url}{path}", headers={"origin": DASHBOARD, **preflight}, timeout=10)
        assert 200 <= answer.status_code < 300, (path, answer.status_code, answer.text)
        assert answer.headers["access-control-allow-private-network"] == "true"
        assert answer.headers["access-control-allow-origin"] == DASHBOARD
        assert {"GET", "POST"} <= {m.strip() for m in answer.headers["access-control-allow-methods"].split(",")}
        assert "content-type" in answer.headers["access-control-allow-headers"].lower()

    get = {**preflight, "access-control-request-method": "GET"}
    del get["access-control-request-headers"]
    answer = httpx.options(f"{agent.url}/v1/health", headers={"origin": DASHBOARD, **get}, timeout=10)
    assert 200 <= answer.status_code < 300 and answer.headers["access-control-allow-private-network"] == "true"

    stranger = httpx.options(f"{agent.url}/v1/unlock", headers={"origin": "https://evil.test", **preflight}, timeout=10)
    assert stranger.status_code >= 400
    assert "access-control-allow-private-network" not in stranger.headers
    assert "access-control-allow-origin" not in stranger.headers


# --- the agent in this process --------------------------------------------------------------------------


class LocalAgent:
    """The agent app over `folder`, with grants signed by a grant key of the test's own."""

    def __init__(self, folder: Path, keys: Any, signer: server_grants.GrantKey, client: str = "203.0.113.7") -> None:
        self.folder = folder
        self.signer = signer
        self.config = resolve_config(
            replay_key=keys.replay,
            grant_key=signer.pinned,
            project="1",
            origin=DASHBOARD,
            audit_log=folder / "audit.jsonl",
            env={},
        )
        self.app = build_app(self.config)
        self.client = TestClient(self.app, client=(client, 40000))

    def grant(self, bundle: bytes, bundle_id: str, action: str = "unlock") -> str:
        """A grant shaped as the server issues it (the hash claim is extra to agents that do not read it)."""
        now = int(time.time())
        claims = {
            "version": GRANT_VERSION,
            "key_id": self.signer.key_id,
            "project_id": 1,
            "project": "acme/shop",
            "bundle_id": bundle_id,
            "bundle_sha256": hashlib.sha256(bundle).hexdigest(),
            "action": action,
            "protected": False,
            "nonce": secrets.token_hex(16),
            "issued_at": now,
            "expires_at": now + 300,
            "requested_by": "fra_tests",
        }
        return sign_grant(claims, self.signer.private)

    def post(self, action: str, grant: str, bundle: bytes, client: TestClient | None = None) -> httpx.Response:
        body = {"grant": grant, "bundle": base64.b64encode(bundle).decode()}
        return (client or self.client).post(f"/v1/{action}", json=body)

    def close(self) -> None:
        self.client.close()


def junk_grant(size: int = 2800) -> str:
    """An unsigned token whose claims carry a long field: what an attacker floods the agent with.

    At the default size the token is just under the 4096 characters the agent reads claims from.
    """
    claims = {"requested_by": "x" * size, "nonce": secrets.token_hex(16), "bundle_id": "y" * 100}
    body = base64.urlsafe_b64encode(orjson.dumps(claims)).rstrip(b"=").decode()
    return f"{body}.AAAA"


@pytest.fixture
def signer(tmp_path: Path) -> server_grants.GrantKey:
    return server_grants.load_or_create(tmp_path / "server-data")


@pytest.fixture
def bundle(seal_payload: Any) -> tuple[str, bytes]:
    bundle_id = secrets.token_hex(16)
    return bundle_id, seal_payload(web_payload(bundle_id, "LOCAL-MARKER"))


@pytest.fixture
def local(tmp_path: Path, keys: Any, signer: server_grants.GrantKey) -> Iterator[LocalAgent]:
    running = LocalAgent(tmp_path / "agent", keys, signer)
    try:
        yield running
    finally:
        running.close()


def test_a_used_grant_stays_used_after_a_flood_and_a_restart(tmp_path, keys, signer, bundle):
    """Unauthenticated refusals cannot push a used nonce out of what a restarted agent remembers."""
    bundle_id, data = bundle
    folder = tmp_path / "agent"
    first = LocalAgent(folder, keys, signer)
    grant = first.grant(data, bundle_id)
    assert first.post("unlock", grant, data).status_code == 200

    flood = 1800  # x ~3 KiB audit lines: more than the 4 MiB of audit log tail the agent used to read back
    statuses = {first.post("unlock", junk_grant(), data).status_code for _ in range(flood)}
    assert statuses <= {401, 429}
    first.close()

    restarted = LocalAgent(folder, keys, signer)
    try:
        again = restarted.post("unlock", grant, data)
        assert again.status_code == 409, again.text
        assert again.json()["reason"] == "reused"
    finally:
        restarted.close()


def test_refusals_are_rate_limited_per_client(local, bundle):
    bundle_id, data = bundle
    statuses = [local.post("unlock", junk_grant(10), data).status_code for _ in range(200)]
    assert statuses[0] == 401 and 429 in statuses, statuses
    limited = local.post("unlock", junk_grant(10), data)
    assert limited.status_code == 429 and limited.json()["reason"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1

    entries = [orjson.loads(line) for line in audit_lines(local.config.audit_log)]
    refused = [e for e in entries if e.get("result") == "refused"]
    summaries = [e for e in entries if e.get("result") == "rate_limited"]
    assert statuses[:30] == [401] * 30  # the default burst per client
    assert len(refused) == statuses.count(401)  # each refusal under the limit has its line (the bucket refills)...
    assert len(summaries) == 1  # ...and the rest one summary for this interval
    assert summaries[0]["suppressed"] >= 1 and summaries[0]["clients"] >= 1

    with TestClient(local.app, client=("198.51.100.9", 1)) as elsewhere:  # another address has its own bucket
        assert local.post("unlock", junk_grant(10), data, client=elsewhere).status_code == 401
    valid = local.post("unlock", local.grant(data, bundle_id), data)  # a real grant is never rate limited
    assert valid.status_code == 200, valid.text


def test_an_oversized_audit_field_is_truncated(local, bundle, tmp_path):
    _, data = bundle
    response = local.post("unlock", junk_grant(), data)
    assert response.status_code == 401
    [line] = audit_lines(local.config.audit_log)
    assert len(line) <= MAX_AUDIT_LINE
    entry = orjson.loads(line)
    assert entry["requested_by"].startswith("xxxx") and len(entry["requested_by"]) < 2800
    assert entry["grant_verified"] is False

    log = AuditLog(tmp_path / "direct.jsonl")
    log.write({"result": "refused", "message": "m" * 100_000, "client": "c" * 5000, "nested": {"k": "v" * 9000}})
    [line] = audit_lines(log.path)
    assert len(line) <= MAX_AUDIT_LINE
    entry = orjson.loads(line)
    assert entry["result"] == "refused" and entry["message"].startswith("mmmm")
