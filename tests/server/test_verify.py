"""Bundle checks at the edge: the libsodium fast path gives exactly the verdicts of the reference check
(`fluxrun.bundle.verify_signature` through `cryptography`), for good, tampered, foreign and unreadable bundles."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fluxrun.bundle import load_capture_key, signing_public_key
from fluxrun_server.ingest import verify


def _batch(seal) -> list[bytes]:
    good = [seal()[1] for _ in range(4)]
    flipped_signature = bytearray(good[1])
    flipped_signature[-1] ^= 0x01
    flipped_body = bytearray(good[2])
    flipped_body[len(flipped_body) // 2] ^= 0x40  # inside the ciphertext: signed bytes changed
    zero_signature = good[3][:-64] + bytes(64)
    return [good[0], bytes(flipped_signature), bytes(flipped_body), zero_signature, b"FLXR", good[3]]


@pytest.mark.skipif(verify._sodium_verify is None, reason="libsodium is not on this system")
def test_the_libsodium_path_gives_the_verdicts_of_the_reference_check(keys, seal):
    key_id, public = signing_public_key(load_capture_key(keys.capture))
    raw = {key_id: base64.b64decode(public)}
    objects = {key_id: Ed25519PublicKey.from_public_bytes(raw[key_id])}
    bundles = _batch(seal)

    fast = verify._check(bundles, objects, raw, sodium=verify._sodium_verify)
    reference = verify._check(bundles, objects, raw, sodium=None)
    assert fast == reference
    assert [c.reason for c in fast] == [None, "tampered", "tampered", "tampered", "truncated", None]

    other = Ed25519PrivateKey.generate().public_key()
    foreign = {key_id: other}  # the same key id registered with another key: every signature is wrong
    foreign_raw = {key_id: other.public_bytes(Encoding.Raw, PublicFormat.Raw)}
    assert verify._check(bundles, foreign, foreign_raw, sodium=verify._sodium_verify) == verify._check(
        bundles, foreign, foreign_raw, sodium=None
    )
    assert all(c.reason is not None for c in verify._check(bundles, foreign, foreign_raw))
    unknown = verify._check(bundles[:1], {"sig_other": other}, {"sig_other": foreign_raw[key_id]})
    assert unknown[0].reason == "unknown_key_id" and key_id in (unknown[0].message or "")


def test_libsodium_refuses_what_it_must(keys, seal):
    if verify._sodium_verify is None:
        pytest.skip("libsodium is not on this system")
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    signature = key.sign(b"message")
    assert verify._sodium_verify(public, signature, b"message")
    assert not verify._sodium_verify(public, signature, b"messagf")
    assert not verify._sodium_verify(public, signature[:63], b"message"), "a short signature is refused"
    assert not verify._sodium_verify(public[:31], signature, b"message"), "a short key is refused"
