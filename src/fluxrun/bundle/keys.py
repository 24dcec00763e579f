"""Key material for sealing and opening bundles, and the key files that hold it.

Two files come out of `fluxrun keys generate DIR`, because two different parties hold them:

* ``capture.key`` goes to the app. It can *sign* bundles and *encrypt* to the owner, but it cannot open
  anything: it holds the Ed25519 signing private key and only the X25519 recipient *public* key.
* ``replay.key`` stays with the owner (agent, developer machines, CI). It holds the X25519 recipient
  private keys that open payloads and the Ed25519 public keys that prove a bundle came from the app.
  It is a list of keys, so after rotation one file (or several merged) still opens old bundles.

Key ids are derived from the public key bytes, so an id can never point at the wrong key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fluxrun.errors import KeyFileError

__all__ = [
    "CAPTURE_KEY_FILENAME",
    "REPLAY_KEY_FILENAME",
    "CaptureKey",
    "ReplayKey",
    "generate_keys",
    "load_capture_key",
    "load_replay_key",
    "load_replay_keys",
    "parse_public_signing_key",
    "recipient_key_id",
    "signing_key_id",
    "signing_public_key",
]

logger = logging.getLogger("fluxrun")

CAPTURE_KEY_FILENAME = "capture.key"
REPLAY_KEY_FILENAME = "replay.key"

_CAPTURE_KIND = "fluxrun-capture-key"
_REPLAY_KIND = "fluxrun-replay-key"
_KEY_FILE_VERSION = 1
_RAW_KEY_SIZE = 32
_GENERATE_HINT = "run `fluxrun keys generate DIR` to create a capture.key / replay.key pair"


@dataclass(frozen=True)
class CaptureKey:
    """What the app holds: enough to sign and encrypt bundles, never enough to open one."""

    signing_key_id: str
    signing_private: Ed25519PrivateKey
    recipient_key_id: str
    recipient_public: X25519PublicKey

    def __repr__(self) -> str:
        # Never let a private key reach a log line through a repr.
        return f"CaptureKey(signing_key_id={self.signing_key_id!r}, recipient_key_id={self.recipient_key_id!r})"


@dataclass(frozen=True)
class ReplayKey:
    """What the owner holds: recipient private keys (open payloads) and signer public keys (verify).

    Several entries per map so that, after a rotation, bundles sealed with older keys still open.
    """

    recipients: dict[str, X25519PrivateKey]
    signers: dict[str, Ed25519PublicKey]

    def __repr__(self) -> str:
        return f"ReplayKey(recipients={sorted(self.recipients)!r}, signers={sorted(self.signers)!r})"


# --- key ids -----------------------------------------------------------------------------------------


def _raw_public(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def signing_key_id(public: Ed25519PublicKey) -> str:
    """``sig_`` + 16 hex chars of sha256(raw public key): short, stable, derived so it cannot lie."""
    return "sig_" + hashlib.sha256(_raw_public(public)).hexdigest()[:16]


def recipient_key_id(public: X25519PublicKey) -> str:
    """``rcp_`` + 16 hex chars of sha256(raw public key)."""
    return "rcp_" + hashlib.sha256(_raw_public(public)).hexdigest()[:16]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def signing_public_key(key: CaptureKey) -> tuple[str, str]:
    """Return ``(key id, base64 raw public key)``: what the server registers to verify the app's bundles."""
    return key.signing_key_id, _b64(_raw_public(key.signing_private.public_key()))


def parse_public_signing_key(text: str) -> tuple[str, Ed25519PublicKey]:
    """Parse ``"sig_xxx:BASE64"`` or bare ``"BASE64"`` (as printed by `signing_public_key`).

    If an id is given it must match the key, so a copy-paste mix-up fails here and not at ingest.
    """
    text = text.strip()
    given_id: str | None = None
    encoded = text
    if ":" in text:
        given_id, _, encoded = text.partition(":")
        given_id = given_id.strip()
        encoded = encoded.strip()
        if not given_id.startswith("sig_"):
            raise KeyFileError(
                f"public signing key {text[:40]!r}: the part before ':' must be a signing key id "
                "(sig_...); expected 'sig_xxx:BASE64' or just BASE64, as printed for the capture key"
            )
    raw = _decode_b64_key(encoded)
    if raw is None:
        raise KeyFileError(
            f"public signing key {text[:40]!r} is not valid base64 of a 32-byte Ed25519 key; "
            "copy it again from where the capture key's public signing key was printed "
            "(format 'sig_xxx:BASE64')"
        )
    public = Ed25519PublicKey.from_public_bytes(raw)
    derived = signing_key_id(public)
    if given_id is not None and given_id != derived:
        raise KeyFileError(
            f"public signing key: the id {given_id!r} does not belong to this key (its id is {derived!r}); "
            "the id and the key were probably copied from different lines"
        )
    return derived, public


def _decode_b64_key(value: object) -> bytes | None:
    """Strict base64 of exactly 32 bytes, else None (callers word the error for their context)."""
    if not isinstance(value, str):
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == _RAW_KEY_SIZE else None


# --- documents (the JSON inside key files) -----------------------------------------------------------


def _capture_document(key: CaptureKey) -> dict[str, Any]:
    private_raw = key.signing_private.private_bytes_raw()
    return {
        "kind": _CAPTURE_KIND,
        "version": _KEY_FILE_VERSION,
        "comment": "FluxRun capture key: the app signs and encrypts bundles with it. It cannot open them.",
        "signing_key_id": key.signing_key_id,
        "signing_private": _b64(private_raw),
        "recipient_key_id": key.recipient_key_id,
        "recipient_public": _b64(_raw_public(key.recipient_public)),
    }


def _replay_document(key: ReplayKey) -> dict[str, Any]:
    return {
        "kind": _REPLAY_KIND,
        "version": _KEY_FILE_VERSION,
        "comment": "FluxRun replay key: opens and verifies bundles. Keep it out of the app and the server.",
        "recipients": [
            {"key_id": key_id, "private": _b64(private.private_bytes_raw())}
            for key_id, private in key.recipients.items()
        ],
        "signers": [{"key_id": key_id, "public": _b64(_raw_public(public))} for key_id, public in key.signers.items()],
    }


def _dump_document(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


def _keys_from_private(
    signing_private: Ed25519PrivateKey, recipient_private: X25519PrivateKey
) -> tuple[CaptureKey, ReplayKey]:
    """Build the matching capture/replay pair from two private keys (also used by the test vectors)."""
    signing_public = signing_private.public_key()
    recipient_public = recipient_private.public_key()
    sig_id = signing_key_id(signing_public)
    rcp_id = recipient_key_id(recipient_public)
    capture = CaptureKey(sig_id, signing_private, rcp_id, recipient_public)
    replay = ReplayKey(recipients={rcp_id: recipient_private}, signers={sig_id: signing_public})
    return capture, replay


# --- writing -----------------------------------------------------------------------------------------


def _write_private_file(path: Path, data: bytes, *, force: bool) -> None:
    """Create `path` with mode 0600 from the first byte; with `force`, replace it atomically.

    O_CREAT|O_EXCL means we never write into a file someone else created (or a symlink planted there),
    and the mode is set at creation so the key is never readable by others, not even briefly.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    target = path
    if force:
        target = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
    fd = os.open(target, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if force:
            os.replace(target, path)
    except BaseException:
        with contextlib.suppress(OSError):
            target.unlink()
        raise


def _write_key_files(directory: Path, capture: CaptureKey, replay: ReplayKey, *, force: bool) -> tuple[Path, Path]:
    directory = Path(directory)
    capture_path = directory / CAPTURE_KEY_FILENAME
    replay_path = directory / REPLAY_KEY_FILENAME
    if not force:
        for path in (capture_path, replay_path):
            if path.exists() or path.is_symlink():
                raise KeyFileError(
                    f"{path} already exists; refusing to overwrite a key (bundles sealed for it would no "
                    "longer open). Pass --force (force=True) to replace it, or pick another directory."
                )
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"{directory}: cannot create the key directory ({exc.strerror or exc})") from exc
    created: list[Path] = []
    try:
        for path, document in (
            (capture_path, _capture_document(capture)),
            (replay_path, _replay_document(replay)),
        ):
            _write_private_file(path, _dump_document(document), force=force)
            created.append(path)
    except FileExistsError as exc:
        for path in created:
            with contextlib.suppress(OSError):
                path.unlink()
        raise KeyFileError(
            f"{exc.filename} appeared while writing keys; refusing to overwrite it. "
            "Pass --force (force=True) or pick another directory."
        ) from exc
    except OSError as exc:
        if not force:
            for path in created:
                with contextlib.suppress(OSError):
                    path.unlink()
        raise KeyFileError(f"{directory}: cannot write key files ({exc.strerror or exc})") from exc
    return capture_path, replay_path


def generate_keys(directory: Path, *, force: bool = False) -> tuple[Path, Path]:
    """Create a fresh key pair set in `directory`; return ``(capture.key path, replay.key path)``.

    Both files are created with mode 0600. Existing files are never overwritten unless `force`.
    """
    capture, replay = _keys_from_private(Ed25519PrivateKey.generate(), X25519PrivateKey.generate())
    return _write_key_files(Path(directory), capture, replay, force=force)


# --- reading -----------------------------------------------------------------------------------------


def _read_document(path: Path, *, expected_kind: str) -> dict[str, Any]:
    """Read and check a key file's envelope; every failure says the path, the problem and the fix."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise KeyFileError(f"{path}: no such key file; {_GENERATE_HINT}, or pass the right path") from exc
    except IsADirectoryError as exc:
        wanted = CAPTURE_KEY_FILENAME if expected_kind == _CAPTURE_KIND else REPLAY_KEY_FILENAME
        raise KeyFileError(f"{path} is a directory; pass the key file inside it ({path / wanted})") from exc
    except PermissionError as exc:
        raise KeyFileError(f"{path}: permission denied; run fluxrun as the user that owns the key file") from exc
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file ({exc.strerror or exc})") from exc

    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        what = "it is empty" if not data.strip() else f"not JSON: {exc}"
        raise KeyFileError(f"{path} is not a FluxRun key file ({what}); {_GENERATE_HINT}") from exc
    if not isinstance(document, dict) or "kind" not in document:
        raise KeyFileError(f"{path} is not a FluxRun key file (no 'kind' field); {_GENERATE_HINT}")

    kind = document["kind"]
    if kind != expected_kind:
        if kind == _CAPTURE_KIND:
            raise KeyFileError(
                f"{path}: this is a capture key (what the app holds; it cannot open bundles); "
                f"inspect/replay need {REPLAY_KEY_FILENAME} from the same `fluxrun keys generate` directory"
            )
        if kind == _REPLAY_KIND:
            raise KeyFileError(
                f"{path}: this is a replay key (it opens bundles; keep it out of the app); the app needs "
                f"{CAPTURE_KEY_FILENAME} from the same `fluxrun keys generate` directory"
            )
        raise KeyFileError(f"{path}: unknown key file kind {kind!r} (expected {expected_kind!r}); {_GENERATE_HINT}")

    version = document.get("version")
    if version != _KEY_FILE_VERSION:
        raise KeyFileError(
            f"{path}: key file version {version!r} is not supported; this fluxrun reads version "
            f"{_KEY_FILE_VERSION}. Upgrade fluxrun (pip install -U fluxrun) to read newer key files"
        )
    _warn_if_exposed(path)  # once it is known to be a key: a stray file passed by mistake is named as such
    return document


def _warn_if_exposed(path: Path) -> None:
    """Private keys readable by group/others are a leak waiting to happen; say so, but keep working."""
    if os.name != "posix":
        return
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning(
            "key file %s is readable by other users (mode %s); it holds a private key. Run: chmod 600 %s",
            path,
            oct(stat.S_IMODE(mode)),
            path,
        )


def _field_key(path: Path, document: dict[str, Any], field: str, where: str = "") -> bytes:
    if field not in document:
        raise KeyFileError(
            f"{path}: missing field {where + field!r}; the file is damaged. Restore it from your secret "
            f"store or {_GENERATE_HINT}"
        )
    raw = _decode_b64_key(document[field])
    if raw is None:
        raise KeyFileError(
            f"{path}: field {where + field!r} must be base64 of a {_RAW_KEY_SIZE}-byte key"
            f"{_describe_bad_key(document[field])}; the file is damaged. Restore it from your secret store "
            f"or {_GENERATE_HINT}"
        )
    return raw


def _describe_bad_key(value: object) -> str:
    if not isinstance(value, str):
        return f" (got {type(value).__name__})"
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return " (not valid base64)"
    return f" (it decodes to {len(raw)} bytes)"


def _check_id(path: Path, given: object, derived: str, field: str) -> None:
    if given != derived:
        raise KeyFileError(
            f"{path}: {field} {given!r} does not match its key (the key's id is {derived!r}); the file was "
            f"edited or damaged. Restore it from your secret store or {_GENERATE_HINT}"
        )


def load_capture_key(path: Path) -> CaptureKey:
    """Load ``capture.key`` (what the app uses to seal bundles)."""
    path = Path(path)
    document = _read_document(path, expected_kind=_CAPTURE_KIND)
    signing_private = Ed25519PrivateKey.from_private_bytes(_field_key(path, document, "signing_private"))
    recipient_public = X25519PublicKey.from_public_bytes(_field_key(path, document, "recipient_public"))
    sig_id = signing_key_id(signing_private.public_key())
    rcp_id = recipient_key_id(recipient_public)
    _check_id(path, document.get("signing_key_id"), sig_id, "signing_key_id")
    _check_id(path, document.get("recipient_key_id"), rcp_id, "recipient_key_id")
    return CaptureKey(sig_id, signing_private, rcp_id, recipient_public)


def _entries(path: Path, document: dict[str, Any], field: str) -> list[dict[str, Any]]:
    entries = document.get(field)
    if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
        raise KeyFileError(
            f"{path}: field {field!r} must be a list of {{'key_id': ..., ...}} objects; the file is damaged. "
            f"Restore it from your secret store or {_GENERATE_HINT}"
        )
    return entries


def load_replay_key(path: Path) -> ReplayKey:
    """Load one ``replay.key`` (what inspect/replay/the agent use to verify and open bundles)."""
    path = Path(path)
    document = _read_document(path, expected_kind=_REPLAY_KIND)
    recipients: dict[str, X25519PrivateKey] = {}
    for index, entry in enumerate(_entries(path, document, "recipients")):
        private = X25519PrivateKey.from_private_bytes(_field_key(path, entry, "private", where=f"recipients[{index}]."))
        key_id = recipient_key_id(private.public_key())
        _check_id(path, entry.get("key_id"), key_id, f"recipients[{index}].key_id")
        recipients[key_id] = private
    signers: dict[str, Ed25519PublicKey] = {}
    for index, entry in enumerate(_entries(path, document, "signers")):
        public = Ed25519PublicKey.from_public_bytes(_field_key(path, entry, "public", where=f"signers[{index}]."))
        key_id = signing_key_id(public)
        _check_id(path, entry.get("key_id"), key_id, f"signers[{index}].key_id")
        signers[key_id] = public
    if not recipients:
        raise KeyFileError(f"{path}: holds no recipient keys, so it cannot open any bundle; {_GENERATE_HINT}")
    return ReplayKey(recipients=recipients, signers=signers)


def load_replay_keys(paths: Iterable[Path]) -> ReplayKey:
    """Load and merge several replay key files: after a rotation, pass the new and the old ones."""
    recipients: dict[str, X25519PrivateKey] = {}
    signers: dict[str, Ed25519PublicKey] = {}
    count = 0
    for path in paths:
        key = load_replay_key(path)
        recipients.update(key.recipients)
        signers.update(key.signers)
        count += 1
    if count == 0:
        raise KeyFileError(f"no replay key file given; pass the path of a {REPLAY_KEY_FILENAME}")
    return ReplayKey(recipients=recipients, signers=signers)
