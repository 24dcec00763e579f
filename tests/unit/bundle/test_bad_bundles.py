"""Every way a bundle can be bad, and the reason code and message each one gets.

`_craft` is an independent implementation of docs/bundle-format.md written against `cryptography`
directly: it builds bundles a correct sealer never would (lying sizes, zip bombs, broken JSON) but that
are properly encrypted and signed, so the reader's checks past the signature are exercised too.
"""

from __future__ import annotations

import base64
import os
import struct
import tracemalloc
from typing import Any

import orjson
import pytest
import zstandard
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxrun.bundle import (
    CaptureKey,
    ReplayKey,
    Sealer,
    generate_keys,
    load_capture_key,
    load_replay_key,
    open_bundle,
    read_bundle,
    verify_signature,
)
from fluxrun.bundle.seal import signing_message
from fluxrun.errors import BundleError


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[CaptureKey, ReplayKey]:
    capture_path, replay_path = generate_keys(tmp_path_factory.mktemp("keys"))
    return load_capture_key(capture_path), load_replay_key(replay_path)


@pytest.fixture(scope="module")
def other_replay(tmp_path_factory: pytest.TempPathFactory) -> ReplayKey:
    _, replay_path = generate_keys(tmp_path_factory.mktemp("other"))
    return load_replay_key(replay_path)


PAYLOAD = {"events": [{"seq": i, "value": f"v{i}" * 10} for i in range(40)]}
SUMMARY = {"route": "/checkout", "status": 500}


@pytest.fixture(scope="module")
def bundle(key_pair: tuple[CaptureKey, ReplayKey]) -> bytes:
    return Sealer(key_pair[0], sdk="t").seal(summary=SUMMARY, payload=PAYLOAD, bundle_id="bnd_bad")


def _sections(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of header, summary and ciphertext bodies."""
    spans = []
    position = 5
    for _ in range(3):
        (length,) = struct.unpack_from(">I", data, position)
        spans.append((position + 4, position + 4 + length))
        position += 4 + length
    return spans


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def _reason(data: bytes, key: ReplayKey, **kwargs: Any) -> BundleError:
    with pytest.raises(BundleError) as info:
        open_bundle(data, key, **kwargs)
    return info.value


# --- tampering ---------------------------------------------------------------------------------------


def test_every_flipped_header_byte_is_caught(bundle: bytes, key_pair: tuple[CaptureKey, ReplayKey]) -> None:
    capture, replay = key_pair
    start, end = _sections(bundle)[0]
    header = bundle[start:end]
    id_start = header.index(capture.signing_key_id.encode())
    id_span = range(start + id_start, start + id_start + len(capture.signing_key_id))
    for index in range(start, end):
        error = _reason(_flip(bundle, index), replay)
        # Editing the signer's id names a key we do not know: that is all a reader can say.
        expected = "unknown_key_id" if index in id_span else "tampered"
        assert error.reason == expected, (index, str(error))


def test_every_flipped_summary_byte_is_caught(bundle: bytes, key_pair: tuple[CaptureKey, ReplayKey]) -> None:
    start, end = _sections(bundle)[1]
    for index in range(start, end):
        assert _reason(_flip(bundle, index), key_pair[1]).reason == "tampered"


@pytest.mark.parametrize("where", ["ciphertext", "signature"])
def test_flipped_ciphertext_or_signature_byte(
    bundle: bytes, key_pair: tuple[CaptureKey, ReplayKey], where: str
) -> None:
    start, end = _sections(bundle)[2] if where == "ciphertext" else (len(bundle) - 64, len(bundle))
    for index in (start, start + 1, (start + end) // 2, end - 17, end - 1):
        damaged = _flip(bundle, index)
        error = _reason(damaged, key_pair[1])
        assert error.reason == "tampered"
        assert "bnd_bad" in str(error)
        # The server's path (no recipient key) catches it too.
        with pytest.raises(BundleError) as info:
            verify_signature(read_bundle(damaged), key_pair[1].signers)
        assert info.value.reason == "tampered"


def test_recipient_id_edit_is_tampering_not_wrong_key(bundle: bytes, key_pair: tuple[CaptureKey, ReplayKey]) -> None:
    capture, replay = key_pair
    damaged = bundle.replace(capture.recipient_key_id.encode(), b"rcp_0000000000000000")
    assert _reason(damaged, replay).reason == "tampered"


# --- framing -----------------------------------------------------------------------------------------


def test_truncated_at_many_offsets(bundle: bytes, key_pair: tuple[CaptureKey, ReplayKey]) -> None:
    spans = _sections(bundle)
    offsets = {1, 3, 4, 5, 7, 9, len(bundle) - 64, len(bundle) - 1}
    for start, end in spans:
        offsets |= {start - 2, start, (start + end) // 2, end}
    for offset in sorted(offsets):
        with pytest.raises(BundleError) as info:
            read_bundle(bundle[:offset])
        assert info.value.reason == "truncated", offset
        assert f"only {offset} are present" in str(info.value)
        assert _reason(bundle[:offset], key_pair[1]).reason == "truncated"


def test_truncated_message_gives_exact_size_once_known(bundle: bytes) -> None:
    with pytest.raises(BundleError) as info:
        read_bundle(bundle[:-10])
    assert f"it needs {len(bundle)} bytes but only {len(bundle) - 10} are present" in str(info.value)
    assert "signature" in str(info.value)


@pytest.mark.parametrize(
    ("data", "hint"),
    [
        (b"", "the file is empty"),
        (b'{"bundle_id": "x"}', "looks like JSON"),
        (b'  [{"bundle_id": "x"}]', "looks like JSON"),
        (zstandard.ZstdCompressor().compress(b"{}"), "bare zstd stream"),
        (b"\x1f\x8b\x08\x00rest", "gzip"),
        (b"<html><body>502 Bad Gateway</body></html>", "HTML"),
        (b"hello world", "text starting with 'hello world'"),
        (b"\x00\x01\x02\x03\x04", "starts with bytes 00 01 02 03 04"),
        (b"FLXQ\x01", "starts with bytes"),
    ],
)
def test_not_a_bundle(data: bytes, hint: str, key_pair: tuple[CaptureKey, ReplayKey]) -> None:
    with pytest.raises(BundleError) as info:
        read_bundle(data)
    assert info.value.reason == "not_a_bundle"
    assert hint in str(info.value)
    assert "FLXR" in str(info.value)
    assert _reason(data, key_pair[1]).reason == "not_a_bundle"


@pytest.mark.parametrize("version", [0, 3, 99, 255])
def test_unsupported_version(bundle: bytes, key_pair: tuple[CaptureKey, ReplayKey], version: int) -> None:
    data = bundle[:4] + bytes([version]) + bundle[5:]
    with pytest.raises(BundleError) as info:
        read_bundle(data)
    assert info.value.reason == "unsupported_version"
    assert f"version {version} is not supported" in str(info.value)
    assert "reads version 1" in str(info.value)
    assert "upgrade" in str(info.value)
    assert _reason(data, key_pair[1]).reason == "unsupported_version"


def test_trailing_bytes(bundle: bytes) -> None:
    with pytest.raises(BundleError) as info:
        read_bundle(bundle + bundle)
    assert info.value.reason == "malformed"
    assert f"{len(bundle)} unexpected bytes after its signature" in str(info.value)


@settings(max_examples=200)
@given(data=st.binary(max_size=200) | st.binary(max_size=100).map(lambda tail: b"FLXR\x01" + tail))
def test_arbitrary_bytes_only_raise_bundle_error(data: bytes) -> None:
    with pytest.raises(BundleError):
        read_bundle(data)


# --- keys --------------------------------------------------------------------------------------------


def test_wrong_key(bundle: bytes, key_pair: tuple[CaptureKey, ReplayKey], other_replay: ReplayKey) -> None:
    capture, _ = key_pair
    error = _reason(bundle, other_replay)
    assert error.reason == "wrong_key"
    message = str(error)
    assert f"sealed for {capture.recipient_key_id}" in message
    assert f"the key file holds {next(iter(other_replay.recipients))}" in message
    assert "another project" in message


def test_unknown_signer(bundle: bytes, key_pair: tuple[CaptureKey, ReplayKey], other_replay: ReplayKey) -> None:
    capture, replay = key_pair
    only_recipient = ReplayKey(recipients=replay.recipients, signers=dict(other_replay.signers))
    error = _reason(bundle, only_recipient)
    assert error.reason == "unknown_key_id"
    assert capture.signing_key_id in str(error)
    assert next(iter(other_replay.signers)) in str(error)

    with pytest.raises(BundleError) as info:
        verify_signature(read_bundle(bundle), {})
    assert info.value.reason == "unknown_key_id"
    assert "known: none" in str(info.value)


# --- size limits -------------------------------------------------------------------------------------


def test_payload_over_limit_is_refused(bundle: bytes, key_pair: tuple[CaptureKey, ReplayKey]) -> None:
    plain_size = read_bundle(bundle).plain_size
    assert open_bundle(bundle, key_pair[1], max_payload_size=plain_size).payload == PAYLOAD
    error = _reason(bundle, key_pair[1], max_payload_size=plain_size - 1)
    assert error.reason == "too_large"
    assert f"limit of {plain_size - 1} bytes" in str(error)
    assert "max_payload_size" in str(error)


def _craft(
    capture: CaptureKey,
    *,
    compressed: bytes,
    plain_size: int,
    header_bytes: bytes | None = None,
    summary_bytes: bytes = b"{}",
    bundle_id: str = "bnd_crafted",
) -> bytes:
    """Build a validly encrypted and signed v1 bundle around arbitrary payload bytes, per the spec."""
    ephemeral = X25519PrivateKey.generate()
    raw = ephemeral.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    recipient_raw = capture.recipient_public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    kek = HKDF(hashes.SHA256(), 32, salt=raw + recipient_raw, info=b"fluxrun/v1 kek").derive(
        ephemeral.exchange(capture.recipient_public)
    )
    data_key, wrap_nonce, payload_nonce = os.urandom(32), os.urandom(12), os.urandom(12)
    wrapped = AESGCM(kek).encrypt(wrap_nonce, data_key, b"fluxrun/v1 wrap " + bundle_id.encode())

    def b64(value: bytes) -> str:
        return base64.b64encode(value).decode()

    if header_bytes is None:
        header_bytes = orjson.dumps(
            {
                "bundle_id": bundle_id,
                "created_at": "2026-01-01T00:00:00.000000Z",
                "sdk": "crafted",
                "signing_key_id": capture.signing_key_id,
                "recipient_key_id": capture.recipient_key_id,
                "cipher": "X25519-HKDF-SHA256-AES-256-GCM",
                "ephemeral_public": b64(raw),
                "wrapped_key": b64(wrapped),
                "wrapped_key_nonce": b64(wrap_nonce),
                "payload_nonce": b64(payload_nonce),
                "compression": "zstd",
                "plain_size": plain_size,
            }
        )
    u32 = struct.Struct(">I").pack
    associated = b"FLXR\x01" + u32(len(header_bytes)) + header_bytes + u32(len(summary_bytes)) + summary_bytes
    ciphertext = AESGCM(data_key).encrypt(payload_nonce, compressed, associated)
    signed = associated + u32(len(ciphertext)) + ciphertext
    return signed + capture.signing_private.sign(signing_message(signed))


def test_crafted_bundle_matches_the_sealer(key_pair: tuple[CaptureKey, ReplayKey]) -> None:
    """The independent builder agrees with the library: the spec is complete."""
    capture, replay = key_pair
    plain = orjson.dumps(PAYLOAD)
    data = _craft(capture, compressed=zstandard.ZstdCompressor().compress(plain), plain_size=len(plain))
    assert open_bundle(data, replay).payload == PAYLOAD


def _zero_bomb(size: int, *, declare_size: bool) -> bytes:
    compressor = zstandard.ZstdCompressor(level=3).compressobj(size=size if declare_size else -1)
    chunk = bytes(1024 * 1024)
    parts = [compressor.compress(chunk) for _ in range(size // len(chunk))]
    return b"".join([*parts, compressor.flush()])


@pytest.mark.parametrize("declare_size", [False, True], ids=["unknown-size", "declared-size"])
def test_zip_bomb_is_refused_without_inflating_it(key_pair: tuple[CaptureKey, ReplayKey], declare_size: bool) -> None:
    capture, replay = key_pair
    bomb = _zero_bomb(256 * 1024 * 1024, declare_size=declare_size)
    assert len(bomb) < 64 * 1024
    data = _craft(capture, compressed=bomb, plain_size=100)  # the header lies

    tracemalloc.start()
    try:
        error = _reason(data, replay, max_payload_size=1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.reason == "too_large"
    assert "limit of 1048576 bytes" in str(error)
    assert peak < 8 * 1024 * 1024


def test_payload_size_that_disagrees_with_header(key_pair: tuple[CaptureKey, ReplayKey]) -> None:
    capture, replay = key_pair
    plain = orjson.dumps(PAYLOAD)
    data = _craft(capture, compressed=zstandard.ZstdCompressor().compress(plain), plain_size=10)
    error = _reason(data, replay)
    assert error.reason == "malformed"
    assert "header says 10" in str(error)


@pytest.mark.parametrize(
    ("compressed", "expected"),
    [
        (b"not zstd at all", "not a zstd frame"),
        (zstandard.ZstdCompressor().compress(b"[1, 2]"), "not an object"),
        (zstandard.ZstdCompressor().compress(b"{nope"), "not valid JSON"),
        (zstandard.ZstdCompressor().compress(b"{}")[:-2], "does not decompress"),
    ],
)
def test_signed_but_broken_payload_is_malformed(
    key_pair: tuple[CaptureKey, ReplayKey], compressed: bytes, expected: str
) -> None:
    error = _reason(_craft(key_pair[0], compressed=compressed, plain_size=6), key_pair[1])
    assert error.reason == "malformed"
    assert expected in str(error)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"{not json", "header is not valid JSON"),
        (b"[]", "header is not a JSON object"),
        (b'{"bundle_id": "x"}', "'created_at' is missing"),
    ],
)
def test_signed_but_broken_header_is_malformed(
    key_pair: tuple[CaptureKey, ReplayKey], header: bytes, expected: str
) -> None:
    """A known key signed these bytes, so they were not changed in transit: the sealer is at fault."""
    data = _craft(key_pair[0], compressed=b"", plain_size=0, header_bytes=header)
    with pytest.raises(BundleError) as info:
        read_bundle(data)
    assert info.value.reason == "malformed"
    assert expected in str(info.value)
    assert _reason(data, key_pair[1]).reason == "malformed"


@pytest.mark.parametrize(("field", "value"), [("cipher", "ChaCha20"), ("compression", "gzip")])
def test_unknown_cipher_or_compression_is_refused(
    key_pair: tuple[CaptureKey, ReplayKey], field: str, value: str
) -> None:
    capture = key_pair[0]
    header = dict(read_bundle(_craft(capture, compressed=b"", plain_size=0)).header, **{field: value})
    bad = _craft(capture, compressed=b"", plain_size=0, header_bytes=orjson.dumps(header))
    error = _reason(bad, key_pair[1])
    assert error.reason == "malformed"
    assert f"{field} {value!r}" in str(error)
