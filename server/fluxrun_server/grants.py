"""The server's grant key and the grants it signs.

A grant lets a dashboard user's browser ask the customer's agent to unlock or replay one bundle. The
server signs it (Ed25519) so the agent can trust the server's access decision without the server ever
holding a key that opens a payload. The grant key is created at first start in DATA_DIR/grant.key
(mode 0600) and kept in a module-level cache keyed by data dir, so every request of one process signs
with the same key without touching the disk.

Scale-out: every node must sign with the same key, because agents pin one. Copy DATA_DIR/grant.key to
each node's data dir before its first start.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fluxrun.grant import (
    DEFAULT_TTL_SECONDS,
    GRANT_VERSION,
    MAX_TTL_SECONDS,
    format_grant_public_key,
    grant_key_id,
    sign_grant,
)

__all__ = ["GRANT_KEY_FILENAME", "GrantKey", "GrantKeyError", "grant_key_for", "issue_grant", "load_or_create"]

log = logging.getLogger("fluxrun_server")

GRANT_KEY_FILENAME = "grant.key"
_KIND = "fluxrun-grant-key"
_VERSION = 1

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")

_cache: dict[Path, GrantKey] = {}
_cache_lock = threading.Lock()


class GrantKeyError(Exception):
    """The grant key file exists but cannot be used; the message says what to do."""


@dataclass(frozen=True)
class GrantKey:
    key_id: str
    private: Ed25519PrivateKey

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode("ascii")

    @property
    def pinned(self) -> str:
        """``grk_xxx:BASE64``, the value of an agent's FLUXRUN_AGENT_GRANT_KEY."""
        return format_grant_public_key(self.public)

    def __repr__(self) -> str:
        return f"GrantKey(key_id={self.key_id!r})"  # never the private key


def _document(key: Ed25519PrivateKey) -> bytes:
    return orjson.dumps(
        {
            "kind": _KIND,
            "version": _VERSION,
            "comment": "FluxRun server grant key: signs unlock/replay grants for agents. It opens nothing.",
            "key_id": grant_key_id(key.public_key()),
            "private": base64.b64encode(key.private_bytes_raw()).decode("ascii"),
        },
        option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE,
    )


def _read(path: Path) -> GrantKey:
    try:
        document = orjson.loads(path.read_bytes())
        raw = base64.b64decode(document["private"], validate=True)
        if document.get("kind") != _KIND or len(raw) != 32:
            raise ValueError("not a grant key")
        private = Ed25519PrivateKey.from_private_bytes(raw)
    except (OSError, ValueError, KeyError, TypeError, binascii.Error, orjson.JSONDecodeError) as exc:
        raise GrantKeyError(
            f"{path}: not a usable FluxRun grant key ({exc}); restore it from a backup, or delete it to make a new "
            "one (agents pinned to the old key must then be given the new one from GET /v1/grant-key)"
        ) from None
    key_id = grant_key_id(private.public_key())
    if document.get("key_id") != key_id:
        raise GrantKeyError(f"{path}: key_id {document.get('key_id')!r} does not match its key ({key_id})")
    return GrantKey(key_id, private)


def _create(path: Path) -> bool:
    """Write a new key atomically; False if another process created one first (then use theirs)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(_document(Ed25519PrivateKey.generate()))
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)  # fails if the file exists: never replace a key agents already pin
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: exclusive create, written in place
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(temp.read_bytes())
                handle.flush()
                os.fsync(handle.fileno())
        return True
    finally:
        with contextlib.suppress(OSError):
            temp.unlink()


def load_or_create(data_dir: Path) -> GrantKey:
    """The grant key of `data_dir`: read DATA_DIR/grant.key, creating it (mode 0600) at first start."""
    directory = Path(data_dir).resolve()
    with _cache_lock:
        cached = _cache.get(directory)
        if cached is not None:
            return cached
        path = directory / GRANT_KEY_FILENAME
        if not path.exists():
            directory.mkdir(parents=True, exist_ok=True)
            if _create(path):
                key = _read(path)
                log.warning(
                    "created the grant key %s in %s; agents pin it: FLUXRUN_AGENT_GRANT_KEY=%s",
                    key.key_id,
                    path,
                    key.pinned,
                )
        key = _read(path)
        _cache[directory] = key
        return key


def grant_key_for(data_dir: Path) -> GrantKey:
    """The cached key for a data dir (loaded by `open_state` at start-up; loaded here if not yet)."""
    return _cache.get(Path(data_dir).resolve()) or load_or_create(data_dir)


def issue_grant(
    key: GrantKey,
    *,
    project_id: int,
    project: str,
    bundle_id: str,
    bundle_sha256: str,
    action: str,
    protected: bool,
    requested_by: str,
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    now: float | None = None,
) -> tuple[str, dict[str, Any]]:
    """Sign a single-use grant; return ``(token, claims)``. The lifetime is capped at MAX_TTL_SECONDS.

    `bundle_sha256` is the hex SHA-256 of the exact sealed bundle bytes the server stores and serves for
    `bundle_id` (the index keeps it per bundle, and every read of the bundle is checked against it): the
    agent opens only bytes with this hash, so another bundle sealed with the same id does not open.
    """
    if not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
        raise ValueError(f"ttl_seconds must be between 1 and {MAX_TTL_SECONDS}")
    bundle_sha256 = bundle_sha256.lower()
    if not _SHA256_HEX.match(bundle_sha256):
        raise ValueError(f"bundle_sha256 must be a SHA-256 in hex, not {bundle_sha256[:80]!r}")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "version": GRANT_VERSION,
        "key_id": key.key_id,
        "project_id": project_id,
        "project": project,
        "bundle_id": bundle_id,
        "bundle_sha256": bundle_sha256,
        "action": action,
        "protected": protected,
        "nonce": secrets.token_hex(16),
        "issued_at": issued,
        "expires_at": issued + ttl_seconds,
        "requested_by": requested_by,
    }
    return sign_grant(claims, key.private), claims
