"""Grant tokens, the pinned key format, the server's grant key file, and the agent's memory of used grants."""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fluxrun.agent.audit import AuditLog
from fluxrun.agent.grant import (
    GRANT_VERSION,
    GrantError,
    bundle_digest,
    format_grant_public_key,
    grant_key_id,
    parse_grant_public_key,
    sign_grant,
    verify_grant,
)
from fluxrun.agent.nonces import NonceStore
from fluxrun.errors import ConfigError
from fluxrun_server import grants as server_grants

NOW = 1_800_000_000
SEALED = b"the exact sealed bundle bytes the server stores"


@pytest.fixture
def signer(tmp_path):
    return server_grants.load_or_create(tmp_path / "data")


def issue(signer, **overrides):
    arguments = {
        "project_id": 1,
        "project": "acme/shop",
        "bundle_id": "b" * 32,
        "bundle_sha256": bundle_digest(SEALED),
        "action": "unlock",
        "protected": False,
        "requested_by": "fra_abcdefgh",
        "now": NOW,
    }
    token, claims = server_grants.issue_grant(signer, **{**arguments, **overrides})
    return token, claims


def verify(signer, token, now=NOW + 1):
    return verify_grant(token, key_id=signer.key_id, public=signer.public, now=now)


def test_a_grant_round_trips_and_carries_its_claims(signer):
    token, claims = issue(signer, ttl_seconds=300)
    grant = verify(signer, token)
    assert grant.bundle_id == "b" * 32 and grant.action == "unlock" and grant.protected is False
    assert grant.project_id == 1 and grant.project == "acme/shop" and grant.requested_by == "fra_abcdefgh"
    assert grant.expires_at == NOW + 300 and grant.nonce == claims["nonce"] and len(grant.nonce) == 32
    assert grant.bundle_sha256 == claims["bundle_sha256"] == hashlib.sha256(SEALED).hexdigest()
    assert claims["version"] == GRANT_VERSION == 2
    assert "=" not in token and token.count(".") == 1
    with pytest.raises(ValueError):
        issue(signer, ttl_seconds=301)
    with pytest.raises(ValueError, match="SHA-256"):
        issue(signer, bundle_sha256="b" * 32)
    assert issue(signer, bundle_sha256=bundle_digest(SEALED).upper())[1]["bundle_sha256"] == bundle_digest(SEALED)


def test_expired_future_and_overlong_grants_are_refused(signer):
    token, _ = issue(signer, ttl_seconds=120)
    with pytest.raises(GrantError, match=r"^grant expired at 2027-01-15T08:02:00Z \(0 s ago\)") as expired:
        verify(signer, token, now=NOW + 120)
    assert expired.value.status == 401 and expired.value.reason == "expired"
    with pytest.raises(GrantError, match="clocks"):
        verify(signer, token, now=NOW - 3600)
    _, claims = issue(signer)
    too_long = sign_grant({**claims, "expires_at": NOW + 3600}, signer.private)
    with pytest.raises(GrantError, match="at most 300 s"):
        verify(signer, too_long)


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b.c", "!!!.???", "eyJ4IjoxfQ.AAAA", "x" * 5000],
    ids=["empty", "one-part", "three-parts", "not-base64", "bad-signature", "huge"],
)
def test_malformed_tokens_are_refused_without_a_traceback(signer, token):
    with pytest.raises(GrantError) as refused:
        verify(signer, token)
    assert refused.value.status in (400, 401)


def test_signed_claims_must_be_well_formed(signer):
    _, claims = issue(signer)
    for broken in (
        {**claims, "action": "delete"},
        {**claims, "nonce": "short"},
        {**claims, "protected": "yes"},
        {**claims, "project_id": True},
        {key: value for key, value in claims.items() if key != "bundle_sha256"},
        {**claims, "bundle_sha256": "B" * 64},
        {**claims, "bundle_sha256": 7},
    ):
        with pytest.raises(GrantError) as refused:
            verify(signer, sign_grant(broken, signer.private))
        assert refused.value.reason == "forged"


def test_grants_of_another_version_are_refused(signer):
    """Version 1 grants named only the bundle id: refused, since a new one is a click away (single use, minutes)."""
    _, claims = issue(signer)
    unbound = {key: value for key, value in claims.items() if key != "bundle_sha256"}
    for old_or_new in ({**unbound, "version": 1}, {**claims, "version": 1}, {**claims, "version": 3}):
        with pytest.raises(GrantError, match="bind the bundle's SHA-256") as refused:
            verify(signer, sign_grant(old_or_new, signer.private))
        assert refused.value.status == 401 and refused.value.reason == "unsupported_version"


def test_the_pinned_key_format_checks_its_id():
    public = Ed25519PrivateKey.generate().public_key()
    text = format_grant_public_key(public)
    assert parse_grant_public_key(f"  {text}\n")[0] == grant_key_id(public)
    other = grant_key_id(Ed25519PrivateKey.generate().public_key())
    with pytest.raises(ConfigError, match="does not belong to this key"):
        parse_grant_public_key(f"{other}:{text.partition(':')[2]}")
    with pytest.raises(ConfigError, match="KEY_ID:BASE64"):
        parse_grant_public_key(text.partition(":")[2])
    with pytest.raises(ConfigError, match="32-byte"):
        parse_grant_public_key(f"{grant_key_id(public)}:AAAA")


def test_the_server_grant_key_is_created_once_with_mode_0600(tmp_path):
    data = tmp_path / "server"
    first = server_grants.load_or_create(data)
    path = data / server_grants.GRANT_KEY_FILENAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert server_grants.grant_key_for(data) is first  # cached per data dir
    server_grants._cache.clear()
    assert server_grants.load_or_create(data).key_id == first.key_id  # read back, not regenerated
    assert first.key_id not in repr(first.private) and "private" not in repr(first)

    racing = tmp_path / "race"
    server_grants._cache.clear()
    results = []
    threads = [
        threading.Thread(
            target=lambda: results.append(server_grants._create(racing / server_grants.GRANT_KEY_FILENAME))
        )
        for _ in range(8)
    ]
    racing.mkdir()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 1  # exactly one writer wins; the others use its key
    assert [p.name for p in racing.iterdir()] == [server_grants.GRANT_KEY_FILENAME]


def test_a_damaged_grant_key_is_reported_not_replaced(tmp_path):
    data = tmp_path / "damaged"
    data.mkdir()
    (data / server_grants.GRANT_KEY_FILENAME).write_text("{}")
    server_grants._cache.clear()
    with pytest.raises(server_grants.GrantKeyError, match="delete it to make a new one"):
        server_grants.load_or_create(data)


def test_used_nonces_are_durable_bounded_and_pruned(tmp_path):
    path = tmp_path / "agent" / "audit.used-grants.sqlite3"
    store = NonceStore(path, max_entries=2)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.claim("a" * 32, NOW + 10, NOW) is True
    assert store.claim("a" * 32, NOW + 10, NOW) is False
    assert store.claim("b" * 32, NOW + 10, NOW) is True
    assert store.claim("c" * 32, NOW + 10, NOW) is None  # full of live grants: refuse, never forget one
    assert store.used("a" * 32) and not store.used("c" * 32)
    store.close()

    reopened = NonceStore(path, max_entries=2)  # a restart: everything claimed is still there
    assert reopened.used("a" * 32) and reopened.claim("b" * 32, NOW + 10, NOW) is False
    assert reopened.claim("c" * 32, NOW + 20, NOW + 11) is True  # the others expired and were dropped
    assert len(reopened) == 1
    other_process = NonceStore(path)  # another worker sharing the file sees the claim at once
    assert other_process.claim("c" * 32, NOW + 20, NOW + 12) is False
    reopened.close()
    other_process.close()


def test_a_new_nonce_store_starts_from_an_older_agents_audit_log(tmp_path):
    log = AuditLog(tmp_path / "audit" / "log.jsonl")
    assert stat.S_IMODE(log.path.stat().st_mode) == 0o600
    now = time.time()
    log.write({"nonce": "d" * 32, "grant_consumed": True, "grant_expires_at": int(now) + 60})
    log.write({"nonce": "e" * 32, "grant_consumed": True, "grant_expires_at": int(now) - 60})  # expired
    log.write({"nonce": "f" * 32, "result": "refused", "grant_expires_at": int(now) + 60})  # never consumed
    with log.path.open("ab") as handle:
        handle.write(b'{"torn line')
    assert AuditLog(log.path).used_nonces(now) == {"d" * 32: int(now) + 60}
    assert os.path.getsize(log.path) > 0

    store = NonceStore(tmp_path / "audit" / "log.used-grants.sqlite3", seed=log.used_nonces)
    assert store.used("d" * 32) and not store.used("e" * 32) and not store.used("f" * 32)
    store.close()
    log.write({"nonce": "9" * 32, "grant_consumed": True, "grant_expires_at": int(now) + 60})
    again = NonceStore(tmp_path / "audit" / "log.used-grants.sqlite3", seed=log.used_nonces)
    assert not again.used("9" * 32)  # seeded once, when the store is created; the log is not read again
    again.close()
