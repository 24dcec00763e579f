"""Grant tokens, the pinned key format, the server's grant key file, and the agent's memory of used grants."""

from __future__ import annotations

import os
import stat
import threading
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fluxrun.agent.audit import AuditLog, NonceCache
from fluxrun.agent.grant import (
    GrantError,
    format_grant_public_key,
    grant_key_id,
    parse_grant_public_key,
    sign_grant,
    verify_grant,
)
from fluxrun.errors import ConfigError
from fluxrun_server import grants as server_grants

NOW = 1_800_000_000


@pytest.fixture
def signer(tmp_path):
    return server_grants.load_or_create(tmp_path / "data")


def issue(signer, **overrides):
    token, claims = server_grants.issue_grant(
        signer,
        project_id=1,
        project="acme/shop",
        bundle_id="b" * 32,
        action="unlock",
        protected=False,
        requested_by="fra_abcdefgh",
        now=NOW,
        **overrides,
    )
    return token, claims


def verify(signer, token, now=NOW + 1):
    return verify_grant(token, key_id=signer.key_id, public=signer.public, now=now)


def test_a_grant_round_trips_and_carries_its_claims(signer):
    token, claims = issue(signer, ttl_seconds=300)
    grant = verify(signer, token)
    assert grant.bundle_id == "b" * 32 and grant.action == "unlock" and grant.protected is False
    assert grant.project_id == 1 and grant.project == "acme/shop" and grant.requested_by == "fra_abcdefgh"
    assert grant.expires_at == NOW + 300 and grant.nonce == claims["nonce"] and len(grant.nonce) == 32
    assert "=" not in token and token.count(".") == 1
    with pytest.raises(ValueError):
        issue(signer, ttl_seconds=301)


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
        {**claims, "version": 2},
        {**claims, "action": "delete"},
        {**claims, "nonce": "short"},
        {**claims, "protected": "yes"},
        {**claims, "project_id": True},
    ):
        with pytest.raises(GrantError) as refused:
            verify(signer, sign_grant(broken, signer.private))
        assert refused.value.reason == "forged"


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


def test_used_nonces_are_bounded_and_survive_a_restart(tmp_path):
    cache = NonceCache(max_entries=2)
    assert cache.claim("a" * 32, NOW + 10, NOW) is True
    assert cache.claim("a" * 32, NOW + 10, NOW) is False
    assert cache.claim("b" * 32, NOW + 10, NOW) is True
    assert cache.claim("c" * 32, NOW + 10, NOW) is None  # full of live grants: refuse, never forget one
    assert cache.claim("c" * 32, NOW + 20, NOW + 11) is True  # the others expired and were dropped
    assert len(cache) == 1

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
