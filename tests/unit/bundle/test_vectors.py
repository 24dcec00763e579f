"""The committed v1 and v2 vectors: they must keep opening, and sealing must keep producing the same bytes.

A failure here means the bundle format changed. That needs a new format version and a new vector,
not a regenerated old one (see tests/vectors/make_vectors.py).
"""

from __future__ import annotations

import base64
import importlib.util
import struct
from pathlib import Path
from types import ModuleType

import orjson
import pytest
import zstandard
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fluxrun.bundle import load_capture_key, load_replay_key, open_bundle, read_bundle, verify_signature
from fluxrun.bundle.codec import ZSTD_LEVEL

VECTORS = Path(__file__).resolve().parents[2] / "vectors"


@pytest.fixture(scope="module")
def make_vectors() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fluxrun_make_vectors", VECTORS / "make_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_bundle_opens_with_committed_key() -> None:
    data = (VECTORS / "bundle-v1.fluxrun").read_bytes()
    replay = load_replay_key(VECTORS / "replay.key")
    opened = open_bundle(data, replay)
    assert opened.payload == orjson.loads((VECTORS / "payload.json").read_bytes())
    assert opened.summary == orjson.loads((VECTORS / "summary.json").read_bytes())
    assert opened.sealed.version == 1
    assert opened.sealed.bundle_id == "bnd_vector_v1_0001"
    assert opened.sealed.created_at == "2026-01-02T03:04:05.678901Z"


def test_committed_v2_bundle_opens_and_names_its_project() -> None:
    data = (VECTORS / "bundle-v2.fluxrun").read_bytes()
    opened = open_bundle(data, load_replay_key(VECTORS / "replay.key"))
    assert opened.payload == orjson.loads((VECTORS / "payload.json").read_bytes())
    assert opened.sealed.version == 2
    assert opened.sealed.project == "acme/shop"
    assert opened.sealed.bundle_id == "bnd_vector_v2_0001"
    assert read_bundle((VECTORS / "bundle-v1.fluxrun").read_bytes()).project is None


def test_committed_bundle_verifies_with_committed_capture_key() -> None:
    capture = load_capture_key(VECTORS / "capture.key")
    sealed = read_bundle((VECTORS / "bundle-v1.fluxrun").read_bytes())
    assert sealed.signing_key_id == capture.signing_key_id
    assert sealed.recipient_key_id == capture.recipient_key_id
    verify_signature(sealed, {capture.signing_key_id: capture.signing_private.public_key()})


def _open_by_the_spec(data: bytes, recipient: X25519PrivateKey, version: int = 1) -> tuple[dict[str, object], bytes]:
    """Decrypt following docs/bundle-format.md step by step, without fluxrun: returns header, zstd frame."""
    assert data[:5] == b"FLXR" + bytes([version])
    position, sections = 5, []
    for _ in range(3):
        (length,) = struct.unpack_from(">I", data, position)
        sections.append(data[position + 4 : position + 4 + length])
        position += 4 + length
    header_bytes, _summary, ciphertext = sections
    associated = data[: position - 4 - len(ciphertext)]
    header = orjson.loads(header_bytes)
    ephemeral = base64.b64decode(header["ephemeral_public"])
    recipient_raw = recipient.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    shared = recipient.exchange(X25519PublicKey.from_public_bytes(ephemeral))
    kek = HKDF(hashes.SHA256(), 32, salt=ephemeral + recipient_raw, info=b"fluxrun/v1 kek").derive(shared)
    data_key = AESGCM(kek).decrypt(
        base64.b64decode(header["wrapped_key_nonce"]),
        base64.b64decode(header["wrapped_key"]),
        b"fluxrun/v1 wrap " + header["bundle_id"].encode(),
    )
    frame = AESGCM(data_key).decrypt(base64.b64decode(header["payload_nonce"]), ciphertext, associated)
    return header, frame


@pytest.mark.parametrize("version", [1, 2])
def test_committed_bundle_opens_by_the_written_spec(make_vectors: ModuleType, version: int) -> None:
    _, replay = make_vectors.vector_keys()
    [recipient] = replay.recipients.values()
    header, frame = _open_by_the_spec((VECTORS / f"bundle-v{version}.fluxrun").read_bytes(), recipient, version)
    assert ("project" in header) == (version >= 2)
    plain = zstandard.ZstdDecompressor().decompress(frame)
    assert len(plain) == header["plain_size"]
    assert orjson.loads(plain) == orjson.loads((VECTORS / "payload.json").read_bytes())


def test_resealing_reproduces_the_committed_bytes(make_vectors: ModuleType) -> None:
    _, replay = make_vectors.vector_keys()
    [recipient] = replay.recipients.values()
    _, committed_frame = _open_by_the_spec((VECTORS / "bundle-v1.fluxrun").read_bytes(), recipient)
    current_frame = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(orjson.dumps(make_vectors.PAYLOAD))
    if current_frame != committed_frame:
        pytest.fail(
            f"zstd {zstandard.ZSTD_VERSION} compresses the vector payload differently from the committed "
            "frame: the bundle format is unchanged but byte-exact resealing cannot be checked with this "
            "libzstd. Pin zstandard or regenerate with `python tests/vectors/make_vectors.py` after review."
        )
    for name, data in make_vectors.build().items():
        assert (VECTORS / name).read_bytes() == data, f"{name} changed: the bundle or key format moved"


def test_vector_keys_match_committed_key_files(make_vectors: ModuleType) -> None:
    capture, replay = make_vectors.vector_keys()
    assert load_capture_key(VECTORS / "capture.key").signing_key_id == capture.signing_key_id
    assert load_replay_key(VECTORS / "replay.key").recipients.keys() == replay.recipients.keys()
