"""The agent's memory of used grants: durable, and out of reach of the requests it judges.

A grant is single use, so the agent keeps each nonce it consumed until that grant expires (after that the
expiry check refuses the grant anyway). The nonces live in their own SQLite file next to the audit log,
not in the log itself: refusals write to the log, so a log that also held the nonces could be flooded
until a restarted agent no longer found a used one. Here only grants whose signature verified are ever
written, so no request the server did not sign can fill or evict the store.

A claim is committed (``synchronous=FULL``) before the grant's action runs, and the nonce is the primary
key, so a claim is atomic across every process that shares the file (an app mounting the agent in
several workers). Expired entries are pruned at start and then at most once a minute.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["NonceStore", "NonceStoreError", "default_nonce_store"]

# Far more unexpired grants than a team asks for in five minutes; full means refuse, never forget one.
DEFAULT_MAX_ENTRIES = 100_000
_PRUNE_EVERY_SECONDS = 60.0


class NonceStoreError(OSError):
    """The store cannot be read or written; the agent refuses the request rather than risk a second use."""


def default_nonce_store(audit_log: Path) -> Path:
    """Where the store lives unless configured: beside the audit log, named after it."""
    return audit_log.with_name(f"{audit_log.stem}.used-grants.sqlite3")


class NonceStore:
    """Used grant nonces with their expiry, in a SQLite file (mode 0600)."""

    def __init__(
        self,
        path: Path,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        seed: Callable[[float], dict[str, int]] | None = None,
    ) -> None:
        """Open (or create) the store and prune it. `seed` fills a store created now (from an older agent's log)."""
        self.path = Path(path)
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._pruned_at = 0.0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            created = not self.path.exists()
            if created:
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            self._db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS used_grants (nonce TEXT PRIMARY KEY, expires_at INTEGER NOT NULL)"
            )
            self._db.execute("CREATE INDEX IF NOT EXISTS used_grants_expiry ON used_grants (expires_at)")
            now = time.time()
            if created and seed is not None:
                rows = [(nonce, expires) for nonce, expires in seed(now).items() if expires > now]
                with self._transaction():
                    self._db.executemany("INSERT OR IGNORE INTO used_grants VALUES (?, ?)", rows)
            self.prune(now)
        except sqlite3.Error as exc:
            raise NonceStoreError(f"cannot open the used-grant store {self.path}: {exc}") from None

    def __len__(self) -> int:
        with self._lock:
            return self._query("SELECT COUNT(*) FROM used_grants")

    def used(self, nonce: str) -> bool:
        """Whether `nonce` was claimed (by this process or any other sharing the file)."""
        with self._lock:
            return self._query("SELECT COUNT(*) FROM used_grants WHERE nonce = ?", nonce) > 0

    def claim(self, nonce: str, expires_at: int, now: float) -> bool | None:
        """Mark `nonce` used, durably: True if it was fresh, False if used before, None if the store is full."""
        with self._lock:
            try:
                with self._transaction():
                    if self._db.execute("SELECT 1 FROM used_grants WHERE nonce = ?", (nonce,)).fetchone():
                        return False
                    if now - self._pruned_at >= _PRUNE_EVERY_SECONDS:
                        self._delete_expired(now)
                    if self._count() >= self.max_entries:
                        self._delete_expired(now)
                        if self._count() >= self.max_entries:
                            return None
                    cursor = self._db.execute(
                        "INSERT OR IGNORE INTO used_grants VALUES (?, ?)", (nonce, int(expires_at))
                    )
                    return cursor.rowcount == 1
            except sqlite3.Error as exc:
                raise NonceStoreError(f"cannot record the used grant in {self.path}: {exc}") from None

    def prune(self, now: float) -> None:
        """Forget grants that have expired (the expiry check refuses them without the store)."""
        with self._lock:
            try:
                with self._transaction():
                    self._delete_expired(now)
            except sqlite3.Error as exc:
                raise NonceStoreError(f"cannot prune the used-grant store {self.path}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __del__(self) -> None:  # an agent app has no shutdown hook when mounted; Python 3.13 warns on unclosed ones
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()

    # --- inside the lock -----------------------------------------------------------------------------

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def _query(self, sql: str, *params: object) -> int:
        try:
            return int(self._db.execute(sql, params).fetchone()[0])
        except sqlite3.Error as exc:
            raise NonceStoreError(f"cannot read the used-grant store {self.path}: {exc}") from None

    def _count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM used_grants").fetchone()[0])

    def _delete_expired(self, now: float) -> None:
        self._db.execute("DELETE FROM used_grants WHERE expires_at <= ?", (int(now),))
        self._pruned_at = now


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): the write lock is taken before the first read."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")
