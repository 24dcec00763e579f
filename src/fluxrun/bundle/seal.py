"""Seal, read, verify and open bundles (binary format v2, specified in docs/bundle-format.md; v1 still reads).

A bundle is what leaves the app: a plaintext header and scrubbed summary the server may read, a payload
only the owner can decrypt, and an Ed25519 signature so the server can tell the app's bundles from
forgeries made with a leaked project token. The server never holds a key that opens a payload.
Format v2 adds the project the app ships to (`WORKSPACE/PROJECT`, from its DSN) to the signed header, so
a bundle signed for one project cannot be accepted into another, whoever registered the public key there.

Layout (all lengths u32 big-endian)::

    "FLXR" | version (1 byte) | len | header JSON | len | summary JSON | len | ciphertext | signature (64)

Readers must stay strict and explain themselves: the server rejects bundles with a stable `reason`
code, and a developer handed a broken file should learn what it is and what to do.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import string
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from os import urandom  # bound at import: a capture interceptor patching os.urandom must not see us
from time import monotonic  # likewise for the clock interceptor
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nacl.bindings import crypto_sign, crypto_sign_open, crypto_sign_seed_keypair
from nacl.exceptions import CryptoError

from fluxrun.bundle.codec import decode_sized, encode_payload
from fluxrun.bundle.keys import CaptureKey, ReplayKey
from fluxrun.errors import BundleError

__all__ = [
    "CIPHER",
    "COMPRESSION",
    "FORMAT_VERSION",
    "MAGIC",
    "SUPPORTED_VERSIONS",
    "OpenedBundle",
    "SealedBundle",
    "Sealer",
    "open_bundle",
    "read_bundle",
    "verify_signature",
]

MAGIC = b"FLXR"
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
# What a project reference may be: `WORKSPACE/PROJECT` as the DSN names it, or "" for a bundle sealed
# without a DSN (written to a folder, never accepted by a server). Bounded so the header stays small.
PROJECT_MAX_LENGTH = 200
CIPHER = "X25519-HKDF-SHA256-AES-256-GCM"
COMPRESSION = "zstd"
SIGNATURE_SIZE = 64
DEFAULT_MAX_PAYLOAD_SIZE = 64 * 1024 * 1024

# One ephemeral X25519 key pair serves many bundles: an X25519 exchange costs more than the rest of
# sealing a 16 KiB payload. Rotating bounds how much one leaked ephemeral key (from app memory)
# exposes. See "Ephemeral key reuse" in docs/bundle-format.md.
EPHEMERAL_MAX_AGE_SECONDS = 600.0
EPHEMERAL_MAX_BUNDLES = 10_000

_U32 = struct.Struct(">I")
_U32_MAX = 0xFFFFFFFF
_PREAMBLE = MAGIC + bytes([FORMAT_VERSION])
_PREAMBLES = {version: MAGIC + bytes([version]) for version in SUPPORTED_VERSIONS}
_KEK_INFO = b"fluxrun/v1 kek"
_WRAP_AAD_PREFIX = b"fluxrun/v1 wrap "
_KEY_SIZE = 32
_NONCE_SIZE = 12
_TAG_SIZE = 16
_SECTIONS = ("header", "summary", "ciphertext")
_HEADER_STR_FIELDS = (
    "bundle_id",
    "created_at",
    "sdk",
    "signing_key_id",
    "recipient_key_id",
    "ephemeral_public",
    "wrapped_key",
    "wrapped_key_nonce",
    "payload_nonce",
    "compression",
    "cipher",
)


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _derive_kek(shared: bytes, ephemeral_public: bytes, recipient_public: bytes) -> bytes:
    """KEK = HKDF-SHA256(shared, salt = ephemeral_pub || recipient_pub, info = "fluxrun/v1 kek")."""
    return HKDF(
        algorithm=hashes.SHA256(),
        length=_KEY_SIZE,
        salt=ephemeral_public + recipient_public,
        info=_KEK_INFO,
    ).derive(shared)


def _wrap_aad(bundle_id: str) -> bytes:
    # Binds a wrapped data key to its bundle: the KEK is shared by many bundles of one ephemeral key.
    return _WRAP_AAD_PREFIX + bundle_id.encode("utf-8")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _format_created_at(created_at: datetime) -> str:
    if created_at.tzinfo is None or created_at.utcoffset() is None:
        raise ValueError("created_at must be timezone-aware (e.g. datetime.now(UTC))")
    return created_at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class _Ephemeral:
    public_b64: str
    kek: bytes
    born: float


# --- sealing -----------------------------------------------------------------------------------------


class Sealer:
    """Seals bundles for one capture key. Thread-safe; create one per process and reuse it.

    `_rng` and `_clock` are private hooks for the committed test vectors and rotation tests only;
    production code must leave them alone (a predictable `_rng` would make every bundle readable).
    `_version=1` seals the old layout (no project), for the committed v1 vector only.

    `project` is the project the bundles are for, as the DSN names it (`WORKSPACE/PROJECT`); it is signed,
    so a server accepts the bundle only into that project. "" (no DSN: bundles go to a folder) seals
    bundles that open and replay locally but that no server accepts.
    """

    def __init__(
        self,
        key: CaptureKey,
        *,
        sdk: str,
        project: str = "",
        _rng: Callable[[int], bytes] = urandom,
        _clock: Callable[[], float] = monotonic,
        _version: int = FORMAT_VERSION,
    ) -> None:
        if not isinstance(project, str) or len(project) > PROJECT_MAX_LENGTH:
            raise ValueError(f"project must be a string of at most {PROJECT_MAX_LENGTH} characters (WORKSPACE/PROJECT)")
        if _version not in SUPPORTED_VERSIONS or (_version == 1 and project):
            raise ValueError(f"cannot seal format version {_version} with project {project!r}")
        self._key = key
        self._sdk = sdk
        self._project = project
        self._version = _version
        self._rng = _rng
        self._clock = _clock
        self._recipient_raw = _raw_public(key.recipient_public)
        # libsodium's Ed25519 (through PyNaCl) signs faster than OpenSSL's; the signatures are the same
        # bytes (Ed25519 is deterministic), only faster to make.
        self._signing_secret = crypto_sign_seed_keypair(key.signing_private.private_bytes_raw())[1]
        self._lock = threading.Lock()
        self._ephemeral = self._new_ephemeral()
        self._uses = 0

    def reset_after_fork(self) -> None:
        """In a forked child: a fresh lock (the parent's sealing thread may have held it at the fork), and a
        new ephemeral key on next use, so sibling workers never share one."""
        self._lock = threading.Lock()
        self._uses = EPHEMERAL_MAX_BUNDLES

    def _new_ephemeral(self) -> _Ephemeral:
        private = X25519PrivateKey.from_private_bytes(self._rng(_KEY_SIZE))
        public_raw = _raw_public(private.public_key())
        kek = _derive_kek(private.exchange(self._key.recipient_public), public_raw, self._recipient_raw)
        # The ephemeral private key goes out of scope here: only the KEK it produced is kept.
        return _Ephemeral(public_b64=_b64(public_raw), kek=kek, born=self._clock())

    def _current_ephemeral(self) -> _Ephemeral:
        with self._lock:
            ephemeral = self._ephemeral
            if self._uses >= EPHEMERAL_MAX_BUNDLES or self._clock() - ephemeral.born >= EPHEMERAL_MAX_AGE_SECONDS:
                ephemeral = self._ephemeral = self._new_ephemeral()
                self._uses = 0
            self._uses += 1
            return ephemeral

    def seal(
        self,
        *,
        summary: dict[str, Any],
        payload: dict[str, Any],
        bundle_id: str,
        created_at: datetime | None = None,
    ) -> bytes:
        """Return the bundle bytes: header and `summary` in the clear, `payload` encrypted, all signed.

        `summary` must already be scrubbed: the server and dashboard read it. Raises TypeError if the
        summary or payload is not JSON-serialisable and ValueError for an empty id or a naive datetime.
        """
        if not isinstance(bundle_id, str) or not bundle_id:
            raise ValueError("bundle_id must be a non-empty string")
        if not isinstance(summary, dict) or not isinstance(payload, dict):
            raise TypeError("summary and payload must be dicts (JSON objects)")
        created = _format_created_at(created_at if created_at is not None else datetime.now(UTC))
        compressed, plain_size = encode_payload(payload)
        summary_bytes = orjson.dumps(summary)

        ephemeral = self._current_ephemeral()
        data_key = self._rng(_KEY_SIZE)
        wrap_nonce = self._rng(_NONCE_SIZE)
        payload_nonce = self._rng(_NONCE_SIZE)
        wrapped_key = AESGCM(ephemeral.kek).encrypt(wrap_nonce, data_key, _wrap_aad(bundle_id))

        header: dict[str, Any] = {"bundle_id": bundle_id}
        if self._version >= 2:
            header["project"] = self._project
        header_bytes = orjson.dumps(
            {
                **header,
                "created_at": created,
                "sdk": self._sdk,
                "signing_key_id": self._key.signing_key_id,
                "recipient_key_id": self._key.recipient_key_id,
                "cipher": CIPHER,
                "ephemeral_public": ephemeral.public_b64,
                "wrapped_key": _b64(wrapped_key),
                "wrapped_key_nonce": _b64(wrap_nonce),
                "payload_nonce": _b64(payload_nonce),
                "compression": COMPRESSION,
                "plain_size": plain_size,
            }
        )
        # Associated data: everything before the ciphertext's length prefix (magic, version, header and
        # summary with their lengths), so neither can be swapped or edited without breaking decryption.
        associated = b"".join(
            (
                _PREAMBLES[self._version],
                _U32.pack(len(header_bytes)),
                header_bytes,
                _U32.pack(len(summary_bytes)),
                summary_bytes,
            )
        )
        ciphertext = AESGCM(data_key).encrypt(payload_nonce, compressed, associated)
        if len(ciphertext) > _U32_MAX:
            raise ValueError(f"payload too large to seal ({len(ciphertext)} bytes compressed)")
        signed = b"".join((associated, _U32.pack(len(ciphertext)), ciphertext))
        return signed + crypto_sign(signing_message(signed), self._signing_secret)[:64]


# --- reading -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SealedBundle:
    """A parsed bundle, before (or without) any key: what the server and `inspect` without a key see."""

    version: int
    header: dict[str, Any]
    summary: dict[str, Any]
    ciphertext: bytes
    signature: bytes
    signed: bytes  # every byte the signature covers

    @property
    def bundle_id(self) -> str:
        return str(self.header["bundle_id"])

    @property
    def project(self) -> str | None:
        """The signed project reference (v2; "" when sealed without a DSN), None for a v1 bundle."""
        return str(self.header["project"]) if self.version >= 2 else None

    @property
    def signing_key_id(self) -> str:
        return str(self.header["signing_key_id"])

    @property
    def recipient_key_id(self) -> str:
        return str(self.header["recipient_key_id"])

    @property
    def created_at(self) -> str:
        return str(self.header["created_at"])

    @property
    def plain_size(self) -> int:
        return int(self.header["plain_size"])

    @property
    def associated_data(self) -> bytes:
        """The AES-GCM associated data: every signed byte before the ciphertext's length prefix."""
        return self.signed[: len(self.signed) - _U32.size - len(self.ciphertext)]


@dataclass(frozen=True)
class OpenedBundle:
    """A verified and decrypted bundle."""

    sealed: SealedBundle
    payload: dict[str, Any]

    @property
    def summary(self) -> dict[str, Any]:
        return self.sealed.summary


@dataclass(frozen=True)
class _Frame:
    version: int
    header: bytes
    summary: bytes
    ciphertext: bytes
    signature: bytes
    signed: bytes


def _describe(data: bytes) -> str:
    """Guess what a non-bundle file is, so the error can say 'this is JSON', not just 'bad magic'."""
    if not data:
        return "the file is empty (0 bytes)"
    stripped = data.lstrip()
    if stripped[:1] in (b"{", b"["):
        return "it looks like JSON"
    if data.startswith(b"\x28\xb5\x2f\xfd"):
        return "it looks like a bare zstd stream"
    if data.startswith(b"\x1f\x8b"):
        return "it looks like gzip data"
    if data.startswith(b"PK\x03\x04"):
        return "it looks like a zip archive"
    if stripped[:1] == b"<":
        return "it looks like HTML or XML (an error page saved instead of the bundle?)"
    head = data[:32]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and all(char in string.printable for char in text):
        return f"it looks like text starting with {text!r}"
    return f"it starts with bytes {head[:8].hex(' ')}"


def _truncated(present: int, needed: int, where: str, *, exact: bool) -> BundleError:
    amount = f"{needed}" if exact else f"at least {needed}"
    return BundleError(
        "truncated",
        f"bundle is truncated: it needs {amount} bytes but only {present} are present (cut off in the "
        f"{where}); the file was probably cut short by an interrupted copy, download or upload",
    )


def _split(data: bytes) -> _Frame:
    """Check magic, version and section lengths; no JSON parsing, no keys."""
    data = bytes(data)
    size = len(data)
    if data[: len(MAGIC)] != MAGIC[: min(size, len(MAGIC))] or size == 0:
        raise BundleError(
            "not_a_bundle", f"not a FluxRun bundle: {_describe(data)}; a bundle starts with the bytes 'FLXR'"
        )
    # The minimum: preamble, three length prefixes and the signature.
    minimum = len(_PREAMBLE) + _U32.size * len(_SECTIONS) + SIGNATURE_SIZE
    if size < len(_PREAMBLE):
        raise _truncated(size, minimum, "format version", exact=False)
    version = data[len(MAGIC)]
    if version not in SUPPORTED_VERSIONS:
        supported = ", ".join(str(v) for v in SUPPORTED_VERSIONS)
        raise BundleError(
            "unsupported_version",
            f"bundle format version {version} is not supported; this fluxrun reads version {supported}. "
            "If the bundle comes from a newer fluxrun, upgrade (pip install -U fluxrun)",
        )
    position = len(_PREAMBLE)
    sections: list[bytes] = []
    for index, name in enumerate(_SECTIONS):
        remaining_prefixes = _U32.size * (len(_SECTIONS) - index - 1)
        if size < position + _U32.size:
            raise _truncated(
                size,
                position + _U32.size + remaining_prefixes + SIGNATURE_SIZE,
                f"{name} length",
                exact=False,
            )
        (length,) = _U32.unpack_from(data, position)
        position += _U32.size
        end = position + length
        if size < end:
            last = index == len(_SECTIONS) - 1
            raise _truncated(size, end + remaining_prefixes + SIGNATURE_SIZE, name, exact=last)
        sections.append(data[position:end])
        position = end
    if size < position + SIGNATURE_SIZE:
        raise _truncated(size, position + SIGNATURE_SIZE, "signature", exact=True)
    if size > position + SIGNATURE_SIZE:
        raise BundleError(
            "malformed",
            f"bundle has {size - position - SIGNATURE_SIZE} unexpected bytes after its signature "
            "(two bundles concatenated, or a file appended to?)",
        )
    return _Frame(
        version=version,
        header=sections[0],
        summary=sections[1],
        ciphertext=sections[2],
        signature=data[position:],
        signed=data[:position],
    )


def _parse_header(raw: bytes, version: int) -> dict[str, Any]:
    try:
        header = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BundleError("malformed", f"bundle header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise BundleError("malformed", "bundle header is not a JSON object")
    for field in _HEADER_STR_FIELDS:
        if not isinstance(header.get(field), str):
            raise BundleError("malformed", f"bundle header field {field!r} is missing or not a string")
    if version >= 2 and (not isinstance(header.get("project"), str) or len(header["project"]) > PROJECT_MAX_LENGTH):
        raise BundleError(
            "malformed",
            f"bundle header field 'project' is missing, not a string or over {PROJECT_MAX_LENGTH} characters",
        )
    plain_size = header.get("plain_size")
    if not isinstance(plain_size, int) or isinstance(plain_size, bool) or plain_size < 0:
        raise BundleError("malformed", "bundle header field 'plain_size' is missing or not a size")
    if header["cipher"] != CIPHER:
        raise BundleError("malformed", f"bundle uses cipher {header['cipher']!r}; format v1 defines only {CIPHER!r}")
    if header["compression"] != COMPRESSION:
        raise BundleError(
            "malformed",
            f"bundle uses compression {header['compression']!r}; format v1 defines only {COMPRESSION!r}",
        )
    return header


def _parse_summary(raw: bytes) -> dict[str, Any]:
    try:
        summary = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BundleError("malformed", f"bundle summary is not valid JSON ({exc})") from exc
    if not isinstance(summary, dict):
        raise BundleError("malformed", "bundle summary is not a JSON object")
    return summary


def _parse(frame: _Frame) -> SealedBundle:
    return SealedBundle(
        version=frame.version,
        header=_parse_header(frame.header, frame.version),
        summary=_parse_summary(frame.summary),
        ciphertext=frame.ciphertext,
        signature=frame.signature,
        signed=frame.signed,
    )


def read_bundle(data: bytes) -> SealedBundle:
    """Parse a bundle without any key. Checks structure only: call `verify_signature` before trusting it."""
    return _parse(_split(data))


_SIGNING_CONTEXT = b"fluxrun/v1 bundle signature\x00"


def signing_message(signed: bytes) -> bytes:
    """What Ed25519 signs: a context string and the SHA-256 of the signed bytes.

    Ed25519 hashes its message twice (SHA-512), so signing a bundle directly costs more the larger it
    is; signing a 32-byte digest costs the same whatever the size, and SHA-256 of the bytes is cheap.
    The context string keeps these signatures from being valid for anything else.
    """
    return _SIGNING_CONTEXT + hashlib.sha256(signed).digest()


def _sodium_accepts(public: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    """libsodium's verification (through PyNaCl): about twice as fast as OpenSSL's, and it
    releases the GIL. It is the stricter of the two (it also refuses small-order and non-canonical
    points), so only its "valid" is taken as final."""
    if len(signature) != 64:  # libsodium reads the first 64 bytes of signature + message as the signature
        return False
    try:
        crypto_sign_open(signature + message, public.public_bytes_raw())
    except (CryptoError, ValueError, TypeError):
        return False
    return True


def verify_signature(sealed: SealedBundle, signers: Mapping[str, Ed25519PublicKey]) -> None:
    """Check the Ed25519 signature with the signer named in the header; raise BundleError if it fails."""
    public = signers.get(sealed.signing_key_id)
    if public is None:
        known = ", ".join(sorted(signers)) or "none"
        raise BundleError(
            "unknown_key_id",
            f"bundle {sealed.bundle_id} was signed with {sealed.signing_key_id}, which is not a known "
            f"signing key (known: {known}). If the app's keys were rotated, also load the key file (or "
            "register the public signing key) that holds it; otherwise the header was altered",
        )
    message = signing_message(sealed.signed)
    if _sodium_accepts(public, sealed.signature, message):
        return
    try:
        public.verify(sealed.signature, message)  # the reference check decides what libsodium refused
    except InvalidSignature:
        raise BundleError(
            "tampered",
            f"bundle {sealed.bundle_id}: the signature by {sealed.signing_key_id} does not match the bytes; "
            "the bundle was changed after it was sealed (or damaged in transit)",
        ) from None


# --- opening -----------------------------------------------------------------------------------------


def _parse_with_key(frame: _Frame, signers: Mapping[str, Ed25519PublicKey]) -> SealedBundle:
    """Parse; if the header or summary is unreadable, use the keys to tell tampering from a bad sealer."""
    try:
        return _parse(frame)
    except BundleError as exc:
        for public in signers.values():
            try:
                public.verify(frame.signature, signing_message(frame.signed))
            except InvalidSignature:
                continue
            raise exc  # a known key signed these very bytes: the sealer wrote them malformed
        raise BundleError(
            "tampered",
            f"bundle cannot be read ({exc}) and its signature matches none of the known signing keys "
            f"({', '.join(sorted(signers)) or 'none'}): it was changed after sealing, or damaged",
        ) from exc


def _b64_field(sealed: SealedBundle, field: str, size: int) -> bytes:
    try:
        raw = base64.b64decode(sealed.header[field], validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != size:
        raise BundleError("malformed", f"bundle header field {field!r} is not base64 of {size} bytes")
    return raw


def open_bundle(data: bytes, key: ReplayKey, *, max_payload_size: int = DEFAULT_MAX_PAYLOAD_SIZE) -> OpenedBundle:
    """Verify and decrypt a bundle with the owner's replay key.

    Nothing is decrypted before the signature is verified, and nothing larger than `max_payload_size`
    is decompressed (the header's size is checked first, the zstd stream is capped as well).
    """
    sealed = _parse_with_key(_split(data), key.signers)
    signer_known = sealed.signing_key_id in key.signers
    if signer_known:
        # First, so a bundle whose recipient id was edited reports `tampered`, not `wrong_key`.
        verify_signature(sealed, key.signers)
    recipient = key.recipients.get(sealed.recipient_key_id)
    if recipient is None:
        held = ", ".join(sorted(key.recipients)) or "none"
        also = (
            ""
            if signer_known
            else f" Its signer {sealed.signing_key_id} is not in the key file either: the key file belongs "
            "to another project or key generation."
        )
        raise BundleError(
            "wrong_key",
            f"bundle {sealed.bundle_id} was sealed for {sealed.recipient_key_id}; the key file holds {held}."
            f"{also} Pass the replay.key generated with the app's capture.key (after a rotation, pass the "
            "old and the new replay.key)",
        )
    if not signer_known:
        verify_signature(sealed, key.signers)  # raises unknown_key_id

    if sealed.plain_size > max_payload_size:
        raise BundleError(
            "too_large",
            f"bundle {sealed.bundle_id} payload is {sealed.plain_size} bytes uncompressed, over the limit of "
            f"{max_payload_size} bytes; if you trust this bundle, raise the limit "
            "(open_bundle(..., max_payload_size=N))",
        )

    ephemeral_raw = _b64_field(sealed, "ephemeral_public", _KEY_SIZE)
    wrapped = _b64_field(sealed, "wrapped_key", _KEY_SIZE + _TAG_SIZE)
    wrap_nonce = _b64_field(sealed, "wrapped_key_nonce", _NONCE_SIZE)
    payload_nonce = _b64_field(sealed, "payload_nonce", _NONCE_SIZE)
    try:
        shared = recipient.exchange(X25519PublicKey.from_public_bytes(ephemeral_raw))
    except ValueError as exc:
        raise BundleError("malformed", f"bundle {sealed.bundle_id}: unusable ephemeral key ({exc})") from exc
    kek = _derive_kek(shared, ephemeral_raw, _raw_public(recipient.public_key()))
    try:
        data_key = AESGCM(kek).decrypt(wrap_nonce, wrapped, _wrap_aad(sealed.bundle_id))
        compressed = AESGCM(data_key).decrypt(payload_nonce, sealed.ciphertext, sealed.associated_data)
    except (InvalidTag, ValueError):
        raise BundleError(
            "tampered",
            f"bundle {sealed.bundle_id} does not decrypt with {sealed.recipient_key_id} although its "
            "signature is valid: the app that sealed it is broken or was given a wrong key",
        ) from None

    payload, size = decode_sized(compressed, max_size=max_payload_size)
    if size != sealed.plain_size:
        raise BundleError(
            "malformed",
            f"bundle {sealed.bundle_id} payload is {size} bytes but its header says {sealed.plain_size}",
        )
    return OpenedBundle(sealed=sealed, payload=payload)
