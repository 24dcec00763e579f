"""Grants: short-lived, single-use permissions the server signs and the customer agent checks.

The server decides *who* may unlock or replay *which* bundle (it knows API keys, workspaces and roles),
but it must never hold a key that opens a payload. So it signs a grant with its own Ed25519 grant key,
the browser carries the grant and the still-sealed bundle to the agent, and the agent, which holds the
replay key and a pinned copy of the server's grant public key, checks the grant before it decrypts.

Token format (compact, URL-safe, no padding)::

    base64url(claims JSON) "." base64url(Ed25519 signature)

The signature covers ``"fluxrun/v1 grant\\x00" + the first segment's ASCII bytes``: the context string
keeps a grant signature from being valid for anything else the key might ever sign, and signing the
encoded segment means the agent verifies exactly the bytes it received, before parsing any JSON.

A grant binds content, not just a name: besides the bundle id it carries ``bundle_sha256``, the SHA-256
of the exact sealed bundle bytes the server stores, and the agent refuses posted bytes with another hash
before it does anything else with them. Otherwise any bundle sealed with the granted id (by anyone holding
the app's capture key) would open under the grant.

Versions: 2 added ``bundle_sha256``. Version 1 grants are refused, not read without the hash: a grant is
single use and lives at most five minutes, so refusing the old format costs one click on "unlock" again,
while accepting it would keep the unbound form alive.

Both sides share this module, which belongs to neither: the server (`fluxrun_server`) signs with
`sign_grant`, the customer agent (`fluxrun.agent`) checks with `verify_grant`. It needs only
`cryptography` and `orjson`, so importing it never pulls in a web framework.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fluxrun.errors import ConfigError, FluxRunError

__all__ = [
    "ACTIONS",
    "DEFAULT_TTL_SECONDS",
    "GRANT_VERSION",
    "MAX_TTL_SECONDS",
    "Grant",
    "GrantError",
    "bundle_digest",
    "format_grant_public_key",
    "grant_key_id",
    "parse_grant_public_key",
    "sign_grant",
    "verify_grant",
]

GRANT_VERSION: Final = 2  # 2: the grant names the bundle's SHA-256 (bundle_sha256)
ACTIONS: Final = ("unlock", "replay")
DEFAULT_TTL_SECONDS: Final = 120
MAX_TTL_SECONDS: Final = 300
# A grant issued further in the future than this is refused: the server's and agent's clocks disagree.
MAX_CLOCK_SKEW_SECONDS: Final = 60
# Far more than a grant ever needs (~400 bytes); refusing longer ones bounds the work before verifying.
MAX_TOKEN_LENGTH: Final = 4096

_CONTEXT: Final = b"fluxrun/v1 grant\x00"
_KEY_ID_PREFIX: Final = "grk_"
_NONCE_RE: Final = re.compile(r"^[0-9a-f]{32}$")
_SHA256_RE: Final = re.compile(r"^[0-9a-f]{64}$")
_B64URL_RE: Final = re.compile(r"^[A-Za-z0-9_-]+$")

Action = Literal["unlock", "replay"]


class GrantError(FluxRunError):
    """A grant is refused. `status` is the HTTP status the agent answers with, `reason` a stable code."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Grant:
    """The verified claims of a grant (only ever built after the signature checked out)."""

    key_id: str
    project_id: int
    project: str | None
    bundle_id: str
    bundle_sha256: str  # hex SHA-256 of the exact sealed bundle bytes the grant opens
    action: Action
    protected: bool
    nonce: str
    issued_at: int
    expires_at: int
    requested_by: str
    claims: dict[str, Any]


def bundle_digest(data: bytes) -> str:
    """The hex SHA-256 a grant names for a sealed bundle: of its exact bytes, as stored and served."""
    return hashlib.sha256(data).hexdigest()


# --- keys ---------------------------------------------------------------------------------------------


def _raw_public(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def grant_key_id(public: Ed25519PublicKey) -> str:
    """``grk_`` + 16 hex of sha256(raw public key): derived, so a pinned id cannot point at another key."""
    return _KEY_ID_PREFIX + hashlib.sha256(_raw_public(public)).hexdigest()[:16]


def format_grant_public_key(public: Ed25519PublicKey) -> str:
    """``grk_xxx:BASE64``: what an operator copies into FLUXRUN_AGENT_GRANT_KEY."""
    return f"{grant_key_id(public)}:{base64.b64encode(_raw_public(public)).decode('ascii')}"


def parse_grant_public_key(text: str) -> tuple[str, Ed25519PublicKey]:
    """Parse ``grk_xxx:BASE64`` (as `GET /v1/grant-key` and the server print it); the id must match the key.

    The id is required: pinning is the point, and an id that does not match its key means the two
    halves were copied from different places.
    """
    text = (text or "").strip()
    given_id, sep, encoded = text.partition(":")
    if not sep or not given_id.startswith(_KEY_ID_PREFIX):
        raise ConfigError(
            f"grant key {text[:40]!r}: expected KEY_ID:BASE64 with a grk_ key id, as `GET /v1/grant-key` on the "
            "FluxRun server returns it ({key_id}:{public_key})"
        )
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError(
            f"grant key {text[:40]!r}: the part after ':' is not base64 of a 32-byte Ed25519 public key; copy it "
            "again from `GET /v1/grant-key` on the FluxRun server"
        )
    public = Ed25519PublicKey.from_public_bytes(raw)
    derived = grant_key_id(public)
    if derived != given_id.strip():
        raise ConfigError(
            f"grant key: the id {given_id.strip()!r} does not belong to this key (its id is {derived!r}); the id and "
            "the key were probably copied from different places"
        )
    return derived, public


# --- tokens -------------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    if not _B64URL_RE.match(text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_grant(claims: dict[str, Any], private: Ed25519PrivateKey) -> str:
    """Encode and sign `claims` (the server's side). Claims are serialised with sorted keys."""
    body = _b64url(orjson.dumps(claims, option=orjson.OPT_SORT_KEYS))
    signature = private.sign(_CONTEXT + body.encode("ascii"))
    return f"{body}.{_b64url(signature)}"


def unverified_claims(token: object) -> dict[str, Any] | None:
    """The claims of a token without any check, for the audit log of a refusal only (never for decisions)."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        return None
    try:
        claims = orjson.loads(_unb64url(token.partition(".")[0]))
    except (ValueError, orjson.JSONDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


def iso(seconds: float) -> str:
    """Unix seconds as ``2026-01-01T12:00:00Z`` (what refusal messages and audit lines show)."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _forged(message: str) -> GrantError:
    return GrantError(401, "forged", message)


def verify_grant(token: object, *, key_id: str, public: Ed25519PublicKey, now: float) -> Grant:
    """Check a grant's form, signature (against the pinned key) and lifetime; return its claims.

    Raises `GrantError` (401) for anything malformed, signed by another key, altered, or expired. What the
    grant is *for* (project, bundle, action) and whether it was used before are the caller's checks.
    """
    if not isinstance(token, str) or not token:
        raise GrantError(400, "malformed", "missing grant: post the grant the FluxRun server issued (POST /v1/grants)")
    if len(token) > MAX_TOKEN_LENGTH:
        raise _forged(f"grant is {len(token)} characters long; a real grant is far shorter than {MAX_TOKEN_LENGTH}")
    body, dot, sig = token.partition(".")
    try:
        if not dot or not body or "." in sig:
            raise ValueError("shape")
        signature = _unb64url(sig)
        raw_claims = _unb64url(body)
    except (ValueError, binascii.Error):
        raise _forged("grant is not a FluxRun grant token (expected base64url(claims).base64url(signature))") from None
    claims_or_none = unverified_claims(token)
    claimed_key = claims_or_none.get("key_id") if claims_or_none else None
    if isinstance(claimed_key, str) and claimed_key != key_id:
        raise _forged(
            f"grant was signed with grant key {claimed_key[:40]!r}; this agent trusts only {key_id} "
            "(FLUXRUN_AGENT_GRANT_KEY). It comes from another FluxRun server, or the server's grant key changed"
        )
    try:
        public.verify(signature, _CONTEXT + body.encode("ascii"))
    except InvalidSignature:
        raise _forged(
            f"grant signature does not verify with the pinned grant key {key_id}: the grant was altered or was not "
            "issued by the FluxRun server this agent trusts"
        ) from None
    try:
        claims = orjson.loads(raw_claims)
    except orjson.JSONDecodeError:
        raise _forged("grant claims are not JSON although the signature verifies") from None
    grant = _parse_claims(claims, key_id)
    if grant.expires_at - grant.issued_at > MAX_TTL_SECONDS:
        raise _forged(
            f"grant lives {grant.expires_at - grant.issued_at} s; grants may live at most {MAX_TTL_SECONDS} s"
        )
    if grant.issued_at > now + MAX_CLOCK_SKEW_SECONDS:
        raise GrantError(
            401,
            "not_yet_valid",
            f"grant was issued at {iso(grant.issued_at)}, in the future for this agent (now {iso(now)}); the clocks "
            "of the FluxRun server and this agent disagree: sync them (NTP)",
        )
    if now >= grant.expires_at:
        raise GrantError(
            401,
            "expired",
            f"grant expired at {iso(grant.expires_at)} ({int(now - grant.expires_at)} s ago); ask the server for a "
            "new one",
        )
    return grant


def _parse_claims(claims: object, key_id: str) -> Grant:
    if not isinstance(claims, dict):
        raise _forged("grant claims are not a JSON object")
    if claims.get("version") != GRANT_VERSION:
        raise GrantError(
            401,
            "unsupported_version",
            f"grant version {claims.get('version')!r} is not supported; this agent reads version {GRANT_VERSION} "
            "grants, which bind the bundle's SHA-256. Ask the server for a new grant (and upgrade a FluxRun server "
            "that still issues older ones)",
        )
    if claims.get("key_id") != key_id:
        raise _forged(f"grant names key {claims.get('key_id')!r}; this agent trusts only {key_id}")

    def field(name: str, kind: type | tuple[type, ...]) -> Any:
        value = claims.get(name)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            raise _forged(f"grant claim {name!r} is missing or has the wrong type")
        return value

    action = field("action", str)
    if action not in ACTIONS:
        raise _forged(f"grant action {action!r} is not one of {', '.join(ACTIONS)}")
    nonce = field("nonce", str)
    if not _NONCE_RE.match(nonce):
        raise _forged("grant nonce is not 16 random bytes in hex")
    bundle_sha256 = field("bundle_sha256", str)
    if not _SHA256_RE.match(bundle_sha256):
        raise _forged("grant claim 'bundle_sha256' is not a SHA-256 in lowercase hex")
    project = claims.get("project")
    return Grant(
        key_id=key_id,
        project_id=field("project_id", int),
        project=project if isinstance(project, str) else None,
        bundle_id=field("bundle_id", str),
        bundle_sha256=bundle_sha256,
        action=action,
        protected=field("protected", bool),
        nonce=nonce,
        issued_at=field("issued_at", int),
        expires_at=field("expires_at", int),
        requested_by=field("requested_by", str),
        claims=dict(claims),
    )
