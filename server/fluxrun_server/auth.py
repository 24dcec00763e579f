"""Tokens in the style of modern API tokens: a kind prefix, random body, and a checksum.

`frt_` marks a project ingest token (what an app ships bundles with), `frc_` a project CI token (what CI reports
replay outcomes with: an app host holding the ingest token cannot mark regressions guarded), `fra_` a
workspace API key. The checksum lets a typo be told from
a revoked token without a database lookup, and lets secret scanners recognise leaked tokens. Only a
SHA-256 hash is stored; lookups go by a short prefix and compare hashes in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import zlib

__all__ = [
    "API_KEY",
    "CI_TOKEN",
    "INGEST_TOKEN",
    "PROJECT_TOKEN_KINDS",
    "TokenError",
    "check_token",
    "hash_token",
    "new_token",
    "token_prefix",
]

INGEST_TOKEN = "frt"
CI_TOKEN = "frc"
API_KEY = "fra"
PROJECT_TOKEN_KINDS = (INGEST_TOKEN, CI_TOKEN)  # both stored as project tokens; the prefix says which
_NAMES = {INGEST_TOKEN: "an ingest token (frt_)", CI_TOKEN: "a CI token (frc_)", API_KEY: "an API key (fra_)"}
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY = 32
_CHECK = 6
_PREFIX = 12  # kind + "_" + 8 characters: enough to find the row, useless for guessing


class TokenError(ValueError):
    """The presented string is not a well-formed token of the expected kind."""


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, rest = divmod(number, 62)
        chars.append(_ALPHABET[rest])
    return "".join(reversed(chars))


def _checksum(kind: str, body: str) -> str:
    return _base62(zlib.crc32(f"{kind}_{body}".encode()), _CHECK)


def new_token(kind: str) -> str:
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_BODY))
    return f"{kind}_{body}{_checksum(kind, body)}"


def check_token(token: str, kind: str) -> str:
    """Validate shape and checksum; return the token stripped. Raises TokenError saying what is wrong."""
    token = token.strip()
    expected = f"{kind}_"
    if not token.startswith(expected):
        other = next((name for prefix, name in _NAMES.items() if token.startswith(f"{prefix}_")), None)
        if other:
            raise TokenError(f"this is {other}; this endpoint needs {_NAMES.get(kind, kind)}")
        raise TokenError(f"not a FluxRun token: expected one starting with {expected}")
    rest = token[len(expected) :]
    if len(rest) != _BODY + _CHECK or any(c not in _ALPHABET for c in rest):
        raise TokenError("malformed token: wrong length or characters (was it cut when copied?)")
    if not hmac.compare_digest(rest[_BODY:], _checksum(kind, rest[:_BODY])):
        raise TokenError("token checksum does not match: it was mistyped or cut when copied")
    return token


def token_prefix(token: str) -> str:
    return token[:_PREFIX]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def hashes_match(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_token(token), stored_hash)
