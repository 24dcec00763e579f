"""Grants and the agent through HTTP, with real processes: the server signs grants, the browser's part
(fetch the sealed bundle and a grant, post both to the agent) is played by httpx, and the agent decides."""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import stat
import time

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fluxrun.agent.grant import grant_key_id, sign_grant
from fluxrun.bundle import open_bundle, read_bundle
from fluxrun.scrub import MASK

pytestmark = pytest.mark.slow

ORIGIN = "http://dashboard.test:5173"  # FLUXRUN_AGENT_ORIGIN of the agent fixture


def claims_of(grant: str) -> dict:
    body = grant.partition(".")[0]
    return orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def headers_of(payload: dict) -> dict[str, str]:
    return {name.lower(): value for name, value in payload["request"]["headers"]}


def issued(server, bundle_id, action="unlock", **extra) -> str:
    response = server.grant(bundle_id, action, **extra)
    assert response.status_code == 200, response.text
    return response.json()["grant"]


def only_audit(agent, grant: str) -> dict:
    entries = agent.audit(claims_of(grant)["nonce"])
    assert entries, "no audit entry for this grant"
    return entries[-1]


# --- the server's side --------------------------------------------------------------------------------


def test_the_grant_key_is_public_and_kept_private_on_disk(server, agent, pinned_grant_key):
    document = httpx.get(f"{server.url}/v1/grant-key", timeout=10).json()
    assert document["key_id"].startswith("grk_") and document["pinned"] == pinned_grant_key
    key_file = server.data_dir / "grant.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    health = httpx.get(f"{agent.url}/v1/health", timeout=10).json()
    assert health["grant_key_id"] == document["key_id"] and health["grant_key_trust"] == "pinned"
    assert health["project"] == str(server.projects["shop"])
    assert health["recipient_key_ids"][0].startswith("rcp_") and health["signing_key_ids"][0].startswith("sig_")
    assert "private" not in str(health).lower()


def test_the_server_signs_what_the_api_key_may_see_and_nothing_else(server, web_run):
    bundle_id, _ = web_run()
    response = server.grant(bundle_id, "replay")
    assert response.status_code == 200, response.text
    claims = response.json()["claims"]
    assert claims == claims_of(response.json()["grant"])
    assert claims["bundle_id"] == bundle_id and claims["action"] == "replay" and claims["protected"] is False
    assert claims["project_id"] == server.projects["shop"] and claims["project"] == "acme/shop"
    assert claims["requested_by"] == server.tokens["admin"][:12]
    assert len(claims["nonce"]) == 32 and claims["expires_at"] - claims["issued_at"] == 120
    assert claims["version"] == 2 and claims["bundle_sha256"] == hashlib.sha256(server.bundle(bundle_id)).hexdigest()

    assert server.grant(bundle_id, key="other_api").status_code == 404  # another workspace: not found
    assert server.grant("0" * 32).status_code == 404
    assert server.grant(bundle_id, key="ingest").status_code == 403  # an ingest token cannot ask
    assert server.grant(bundle_id, ttl_seconds=301).status_code == 422  # at most five minutes
    assert server.grant(bundle_id, "decrypt").status_code == 422
    assert server.grant(bundle_id, ttl_seconds=300).json()["claims"]["expires_at"] - claims["issued_at"] >= 300


def test_a_member_cannot_ask_for_a_protected_grant(server, web_run):
    bundle_id, _ = web_run()
    response = server.grant(bundle_id, key="member", protected=True)
    assert response.status_code == 403
    assert "owner or admin" in response.json()["detail"] and "member" in response.json()["detail"]
    assert server.grant(bundle_id, key="member").status_code == 200  # the masked view is fine


# --- unlock -------------------------------------------------------------------------------------------


def test_unlock_returns_the_payload_masked(server, agent, web_run):
    bundle_id, marker = web_run()
    grant = issued(server, bundle_id, key="member")
    response = agent.post("unlock", grant, server.bundle(bundle_id))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["bundle_id"] == bundle_id and body["masked"] is True and body["protected"] is False
    payload = body["payload"]
    headers = headers_of(payload)
    assert headers["authorization"] == f"Bearer {MASK}"
    assert headers["cookie"] == f"sid={MASK}"
    assert orjson.loads(payload["request"]["body"]["text"]) == {"user": "al", "password": MASK, "note": marker}
    assert payload["request"]["query_string"] == f"next=%2Fhome&session={MASK}"
    http, env, log = payload["events"]
    assert http["data"]["request"]["url"] == f"https://auth.test/token?api_key={MASK}"
    assert http["call"] == f"POST https://auth.test/token?api_key={MASK}"
    assert http["data"]["request"]["headers"] == [["Authorization", f"Bearer {MASK}"]]
    assert orjson.loads(http["data"]["response"]["body"]["text"]) == {"access_token": MASK}
    assert env["data"] == {"key": "SHOP_DB_PASSWORD", "present": True, "value": MASK}
    assert log["data"]["message"] == f"login for al ({marker})"  # nothing secret in it: kept
    for secret in ("tok-live-authorization", "hunter2-body", "key-in-url-123", "upstream-secret-1", "env-secret-3"):
        assert secret not in response.text

    entry = only_audit(agent, grant)
    assert entry["result"] == "allowed" and entry["status"] == 200 and entry["action"] == "unlock"
    assert entry["bundle_id"] == bundle_id and entry["project_id"] == server.projects["shop"]
    assert entry["requested_by"] == server.tokens["member"][:12] and entry["protected"] is False
    assert entry["client"].startswith("127.0.0.1:") and entry["time"].endswith("Z")
    assert entry["grant_verified"] is True and entry["grant_consumed"] is True


def test_a_protected_unlock_by_an_admin_returns_the_raw_values(server, agent, web_run):
    bundle_id, _ = web_run()
    grant = issued(server, bundle_id, protected=True)
    response = agent.post("unlock", grant, server.bundle(bundle_id))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["protected"] is True and body["masked"] is False
    assert headers_of(body["payload"])["authorization"] == "Bearer tok-live-authorization-9f8e7d"
    assert orjson.loads(body["payload"]["request"]["body"]["text"])["password"] == "hunter2-body"
    assert body["payload"]["events"][1]["data"]["value"] == "env-secret-3"
    entry = only_audit(agent, grant)
    assert entry["protected"] is True and entry["requested_by"] == server.tokens["admin"][:12]


def test_the_captured_failure_unlocks_masked(server, agent, captured_failure):
    bundle_id = server.ingest(captured_failure)
    response = agent.post("unlock", issued(server, bundle_id), server.bundle(bundle_id))
    assert response.status_code == 200, response.text
    events = {e["call"]: e for e in response.json()["payload"]["events"]}
    assert events["accounts.load"]["data"]["result"]["password"] == MASK
    assert events["env SHOP_DB_PASSWORD"]["data"]["value"] == MASK
    assert events["WARNING billing"]["data"]["message"] == f"charging 7 with password={MASK}"
    assert "hunter2-account" not in response.text and "env-secret-for-capture" not in response.text


# --- refusals -----------------------------------------------------------------------------------------


def test_an_expired_grant_is_refused(server, agent, web_run):
    bundle_id, _ = web_run()
    grant = issued(server, bundle_id, ttl_seconds=1)
    time.sleep(max(0.0, claims_of(grant)["expires_at"] - time.time()) + 0.2)
    response = agent.post("unlock", grant, server.bundle(bundle_id))
    assert response.status_code == 401
    assert response.json()["reason"] == "expired" and response.json()["detail"].startswith("grant expired at ")
    entry = only_audit(agent, grant)
    assert entry["result"] == "refused" and entry["reason"] == "expired" and entry["status"] == 401


def test_a_grant_is_single_use(server, agent, web_run):
    bundle_id, _ = web_run()
    grant = issued(server, bundle_id)
    bundle = server.bundle(bundle_id)
    assert agent.post("unlock", grant, bundle).status_code == 200
    again = agent.post("unlock", grant, bundle)
    assert again.status_code == 409 and again.json()["detail"].startswith("grant already used")
    results = [(e["result"], e["status"]) for e in agent.audit(claims_of(grant)["nonce"])]
    assert results == [("allowed", 200), ("refused", 409)]


def test_a_grant_signed_by_another_key_is_refused(server, agent, web_run):
    bundle_id, _ = web_run()
    claims = {**claims_of(issued(server, bundle_id)), "nonce": secrets.token_hex(16)}
    stranger = Ed25519PrivateKey.generate()
    bundle = server.bundle(bundle_id)

    same_id = agent.post("unlock", sign_grant(claims, stranger), bundle)  # claims the pinned key id
    assert same_id.status_code == 401 and same_id.json()["reason"] == "forged"
    assert "does not verify with the pinned grant key" in same_id.json()["detail"]

    claims = {**claims, "nonce": secrets.token_hex(16), "key_id": grant_key_id(stranger.public_key())}
    own_id = agent.post("unlock", sign_grant(claims, stranger), bundle)
    assert own_id.status_code == 401 and "this agent trusts only" in own_id.json()["detail"]
    entry = only_audit(agent, sign_grant(claims, stranger))
    assert entry["result"] == "refused" and entry["grant_verified"] is False


def test_a_grant_with_edited_claims_is_refused(server, agent, web_run):
    bundle_id, _ = web_run()
    grant = issued(server, bundle_id, key="member")
    edited = {**claims_of(grant), "protected": True}
    body = base64.urlsafe_b64encode(orjson.dumps(edited, option=orjson.OPT_SORT_KEYS)).rstrip(b"=").decode()
    forged = f"{body}.{grant.partition('.')[2]}"
    response = agent.post("unlock", forged, server.bundle(bundle_id))
    assert response.status_code == 401 and "altered" in response.json()["detail"]
    assert agent.post("unlock", "not.a-grant", server.bundle(bundle_id)).status_code == 401
    assert agent.post("unlock", grant, server.bundle(bundle_id)).status_code == 200  # the original still works


def test_a_grant_for_another_bundle_is_refused(server, agent, web_run):
    granted, _ = web_run()
    other, _ = web_run()
    grant = issued(server, granted)
    response = agent.post("unlock", grant, server.bundle(other))
    assert response.status_code == 403
    digest = hashlib.sha256(server.bundle(other)).hexdigest()
    assert response.json()["detail"].startswith(f"grant is for bundle {granted} with SHA-256 ")
    assert f"but the posted bytes have SHA-256 {digest}" in response.json()["detail"]
    assert only_audit(agent, grant)["reason"] == "wrong_bundle"
    assert agent.post("unlock", grant, server.bundle(granted)).status_code == 200  # a refusal does not use it up


def test_a_grant_for_another_project_is_refused(server, agent, web_run):
    bundle_id, _ = web_run(token="other_ingest")
    grant = issued(server, bundle_id, key="other_api")
    response = agent.post("unlock", grant, server.bundle(bundle_id, key="other_api"))
    assert response.status_code == 403
    app_id, shop_id = server.projects["app"], server.projects["shop"]
    assert response.json()["detail"] == f"grant is for project {app_id} (other/app), this agent serves {shop_id}"
    entry = only_audit(agent, grant)
    assert entry["reason"] == "wrong_project" and entry["requested_by"] == server.tokens["other_api"][:12]


def test_an_unlock_grant_cannot_replay(server, agent, web_run):
    bundle_id, _ = web_run()
    grant = issued(server, bundle_id, "unlock")
    response = agent.post("replay", grant, server.bundle(bundle_id))
    assert response.status_code == 403
    assert response.json()["detail"] == "grant is for unlock, not replay; ask the server for a replay grant"
    entry = only_audit(agent, grant)
    assert entry["action"] == "replay" and entry["reason"] == "wrong_action"


def test_a_tampered_bundle_is_refused_before_it_is_read(server, agent, web_run):
    """The grant names the stored bytes' SHA-256, so a flipped bit is refused before the bundle is parsed."""
    bundle_id, _ = web_run()
    tampered = bytearray(server.bundle(bundle_id))
    tampered[-70] ^= 0xFF  # inside the ciphertext: the bundle's own signature no longer matches either
    response = agent.post("unlock", issued(server, bundle_id), bytes(tampered))
    assert response.status_code == 403 and response.json()["reason"] == "wrong_bundle"
    bad = agent.post("unlock", issued(server, bundle_id), b"not a bundle")
    assert bad.status_code == 403 and bad.json()["reason"] == "wrong_bundle"
    malformed = httpx.post(f"{agent.url}/v1/unlock", content=b"{", timeout=10)
    assert malformed.status_code == 400


# --- replay -------------------------------------------------------------------------------------------


def test_replay_reproduces_the_captured_failure(server, agent, captured_failure):
    bundle_id = server.ingest(captured_failure)
    grant = issued(server, bundle_id, "replay")
    response = agent.post("replay", grant, server.bundle(bundle_id))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["outcome"] == "reproduced", body
    assert body["entry"] == "fluxrun_agent_jobs:charge"
    assert body["original"]["error_type"] == body["new"]["error_type"] == "builtins:KeyError"
    assert body["served"] == {"host": 1, "env": 2} and body["unconsumed"] == []  # logs are written, not served
    entry = only_audit(agent, grant)
    assert entry["action"] == "replay" and entry["result"] == "allowed" and entry["replay"] == "reproduced"


def test_a_divergent_replay_answers_200_with_the_divergence(server, agent, captured_failure, keys, sealer):
    payload = open_bundle(captured_failure, keys.replay_key).payload
    bundle_id = secrets.token_hex(16)
    without_io = {**payload, "bundle_id": bundle_id, "events": []}  # the code will make calls it cannot be served
    summary = {**read_bundle(captured_failure).summary, "bundle_id": bundle_id, "events": []}
    server.ingest(sealer.seal(summary=summary, payload=without_io, bundle_id=bundle_id))
    response = agent.post("replay", issued(server, bundle_id, "replay"), server.bundle(bundle_id))
    assert response.status_code == 200, response.text
    error = response.json()["error"]
    assert error["type"] == "divergence" and "accounts.load" in error["message"]


# --- CORS ---------------------------------------------------------------------------------------------


def test_cors_allows_only_the_dashboard_origin(agent):
    preflight = {"access-control-request-method": "POST", "access-control-request-headers": "content-type"}
    allowed = httpx.options(f"{agent.url}/v1/unlock", headers={"origin": ORIGIN, **preflight}, timeout=10)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
    stranger = httpx.options(f"{agent.url}/v1/unlock", headers={"origin": "https://evil.test", **preflight}, timeout=10)
    assert stranger.status_code == 400 and "access-control-allow-origin" not in stranger.headers

    simple = httpx.get(f"{agent.url}/v1/health", headers={"origin": ORIGIN}, timeout=10)
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.get(f"{agent.url}/v1/health", headers={"origin": "https://evil.test"}, timeout=10)
    assert "access-control-allow-origin" not in other.headers

    private = {**preflight, "access-control-request-private-network": "true"}
    pna = httpx.options(f"{agent.url}/v1/unlock", headers={"origin": ORIGIN, **private}, timeout=10)
    assert pna.status_code == 200 and pna.headers["access-control-allow-private-network"] == "true"
    no_pna = httpx.options(f"{agent.url}/v1/unlock", headers={"origin": "https://evil.test", **private}, timeout=10)
    assert "access-control-allow-private-network" not in no_pna.headers


# --- the trust boundary -------------------------------------------------------------------------------


def test_the_server_never_holds_plaintext_or_the_replay_key(server, agent, web_run, keys, captured_failure):
    """The whole flow (unlock masked and protected, replay), then every byte the server has is searched."""
    bundle_id, marker = web_run()
    for protected in (False, True):
        response = agent.post("unlock", issued(server, bundle_id, protected=protected), server.bundle(bundle_id))
        assert response.status_code == 200 and marker in response.text  # the agent could read it...
    replayed = server.ingest(captured_failure)
    assert agent.post("replay", issued(server, replayed, "replay"), server.bundle(replayed)).status_code == 200

    document = orjson.loads(keys.replay.read_bytes())
    needles = {"marker": marker.encode(), "payload password": b"hunter2-body"}
    for index, entry in enumerate(document["recipients"]):
        raw = base64.b64decode(entry["private"])
        needles[f"replay key {index} (raw)"] = raw
        needles[f"replay key {index} (base64)"] = entry["private"].encode()
        needles[f"replay key {index} (base64url)"] = base64.urlsafe_b64encode(raw).rstrip(b"=")
        needles[f"replay key {index} (hex)"] = raw.hex().encode()

    searched = 0
    for root, _dirs, files in os.walk(server.data_dir):  # WAL, SQLite (and its journals), objects, grant.key
        for name in files:
            data = (server.data_dir / root / name).read_bytes()
            searched += len(data)
            for what, needle in needles.items():
                assert needle not in data, f"{what} found in the server's {root}/{name}"
    log = server.output().encode()
    for what, needle in needles.items():
        assert needle not in log, f"{what} found in the server's output"
    assert searched > 10_000  # it did hold the (encrypted) bundles
