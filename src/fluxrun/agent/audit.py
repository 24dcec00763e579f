"""The agent's audit trail and its memory of used grants.

Every unlock and replay, allowed or refused, becomes one JSON line: who asked (the API key prefix the
server put in the grant), for what, and what happened. The file is the customer's record of every time
plaintext left the agent, so a write that fails makes the request fail rather than go unrecorded.

Used grant nonces are kept until their grant expires (after that the expiry check refuses the grant
anyway), in a bounded map. At start-up the map is refilled from the audit log's tail, so restarting the
agent does not make a used grant usable again.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import orjson

__all__ = ["AuditLog", "NonceCache"]

# How much of the audit log's end is read at start-up to recover used nonces: grants live at most five
# minutes, so this covers thousands of grants.
_TAIL_BYTES = 4 * 1024 * 1024


class AuditLog:
    """Append-only JSON lines, mode 0600, written and fsynced under a lock (lines never interleave)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.close(fd)

    def write(self, entry: dict[str, Any]) -> None:
        """Append one entry; raises OSError if it cannot be made durable (the caller refuses the request)."""
        line = orjson.dumps(entry, default=str) + b"\n"
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)

    def used_nonces(self, now: float) -> dict[str, int]:
        """Nonces of grants this agent consumed that have not expired yet (read from the log's tail)."""
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


class NonceCache:
    """Grant nonces already used, each kept until its grant expires; bounded, and full means refuse."""

    def __init__(self, max_entries: int = 100_000, initial: dict[str, int] | None = None) -> None:
        self.max_entries = max_entries
        self._used: dict[str, int] = dict(initial or {})
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._used)

    def used(self, nonce: str) -> bool:
        with self._lock:
            return nonce in self._used

    def claim(self, nonce: str, expires_at: int, now: float) -> bool | None:
        """Mark `nonce` used: True if it was fresh, False if it was used before, None if the cache is full."""
        with self._lock:
            if nonce in self._used:
                return False
            if len(self._used) >= self.max_entries:
                self._prune(now)
                if len(self._used) >= self.max_entries:
                    return None
            self._used[nonce] = expires_at
            return True

    def _prune(self, now: float) -> None:
        self._used = {nonce: expires for nonce, expires in self._used.items() if expires > now}
