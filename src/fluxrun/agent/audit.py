"""The agent's audit trail: one bounded JSON line per unlock and replay, allowed or refused.

Every request becomes one line: who asked (the API key prefix the server put in the grant), for what, and
what happened. The file is the customer's record of every time plaintext left the agent, so a write that
fails makes the request fail rather than go unrecorded.

A refusal's fields partly come from whoever sent it (the unverified claims of a forged grant, the client
address), so every line is bounded: each text field is cut to a few hundred characters and the whole line
to `MAX_LINE_BYTES`. Used grant nonces are not kept here (see `fluxrun.agent.nonces`); `used_nonces` only
seeds a new nonce store from the log an older agent wrote.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import orjson

__all__ = ["MAX_LINE_BYTES", "AuditLog", "bounded_line"]

MAX_LINE_BYTES = 2048
# Per text field; a refusal's message says what was wrong in far fewer characters.
MAX_FIELD_CHARS = 256
MAX_MESSAGE_CHARS = 512
# What a line keeps if even short fields do not fit (many fields): enough to know what happened.
_ESSENTIAL = ("time", "action", "client", "result", "status", "reason", "bundle_id", "nonce", "grant_verified")
# How much of an older agent's log end is read to seed a new nonce store: covers thousands of grants.
_TAIL_BYTES = 4 * 1024 * 1024
_INT64 = 2**63


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...[{len(text) - limit} more chars]"


def _field(value: Any, limit: int) -> Any:
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else _cut(str(value), limit)
    if isinstance(value, str):
        return _cut(value, limit)
    try:
        text = orjson.dumps(value, default=str).decode()
    except (TypeError, orjson.JSONEncodeError):
        text = repr(value)
    return _cut(text, limit)


def bounded_line(entry: dict[str, Any]) -> bytes:
    """`entry` as one JSON line of at most MAX_LINE_BYTES: long fields are cut, and cut again if needed."""
    limits = (MAX_FIELD_CHARS, 128, 64, 24)
    fields: dict[str, Any] = {}
    for limit in limits:
        fields = {
            str(key)[:64]: _field(value, MAX_MESSAGE_CHARS * limit // MAX_FIELD_CHARS if key == "message" else limit)
            for key, value in entry.items()
        }
        line = orjson.dumps(fields) + b"\n"
        if len(line) <= MAX_LINE_BYTES:
            return line
    essential = {key: fields[key] for key in _ESSENTIAL if key in fields}
    return orjson.dumps({**essential, "truncated": True}) + b"\n"


class AuditLog:
    """Append-only JSON lines, mode 0600, written and fsynced under a lock (lines never interleave)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.close(fd)

    def write(self, entry: dict[str, Any]) -> None:
        """Append one bounded entry; raises OSError if it cannot be made durable (the caller refuses the request)."""
        line = bounded_line(entry)
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)

    def used_nonces(self, now: float) -> dict[str, int]:
        """Unexpired nonces an older agent recorded as consumed in this log's tail (to seed a new nonce store)."""
        try:
            with self.path.open("rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, size - _TAIL_BYTES))
                tail = handle.read()
        except OSError:
            return {}
        found: dict[str, int] = {}
        for line in tail.splitlines():
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # the first line of a tail may be cut; a torn last line is not ours to judge
            if not isinstance(entry, dict) or not entry.get("grant_consumed"):
                continue
            nonce, expires = entry.get("nonce"), entry.get("grant_expires_at")
            if isinstance(nonce, str) and isinstance(expires, int) and expires > now:
                found[nonce] = expires
        return found
