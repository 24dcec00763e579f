"""What one server process holds: settings, the index engine, the WAL, the object store, the aggregator,
and short-lived caches of tokens and signing keys (so ingest does not hit the database per request)."""

from __future__ import annotations

import base64
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Engine
from sqlmodel import Session, select

from fluxrun_server.auth import hashes_match
from fluxrun_server.index.models import ApiKey, ProjectToken, SigningKey
from fluxrun_server.ingest.aggregator_process import AggregatorProcess
from fluxrun_server.ingest.wal import WriteAheadLog
from fluxrun_server.settings import ServerSettings
from fluxrun_server.storage.base import ObjectStore

__all__ = ["CACHE_SECONDS", "ServerState"]

CACHE_SECONDS = 5.0  # a revoked token or key stops working within this many seconds


@dataclass
class _Cached:
    value: Any
    until: float


@dataclass
class ServerState:
    settings: ServerSettings
    engine: Engine
    wal: WriteAheadLog
    store: ObjectStore
    aggregator: AggregatorProcess
    _tokens: dict[str, _Cached] = field(default_factory=dict)
    _keys: dict[int, _Cached] = field(default_factory=dict)
    _api_keys: dict[str, _Cached] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def project_for_token(self, token: str, prefix: str) -> int | None:
        """The project an ingest token belongs to, or None if unknown, revoked or wrong."""
        now = time.monotonic()
        cached = self._tokens.get(prefix)
        if cached is None or cached.until < now:
            with Session(self.engine) as session:
                row = session.exec(select(ProjectToken).where(ProjectToken.prefix == prefix)).first()
                value = None if row is None or row.revoked_at is not None else (row.project_id, row.token_hash)
            cached = _Cached(value, now + CACHE_SECONDS)
            with self._lock:
                self._tokens[prefix] = cached
        if cached.value is None or not hashes_match(token, cached.value[1]):
            return None
        return int(cached.value[0])

    def signers(self, project_id: int) -> dict[str, Ed25519PublicKey]:
        now = time.monotonic()
        cached = self._keys.get(project_id)
        if cached is None or cached.until < now:
            with Session(self.engine) as session:
                rows = session.exec(
                    select(SigningKey).where(SigningKey.project_id == project_id, SigningKey.revoked_at == None)  # noqa: E711
                ).all()
                keys = {r.key_id: Ed25519PublicKey.from_public_bytes(base64.b64decode(r.public_key)) for r in rows}
            cached = _Cached(keys, now + CACHE_SECONDS)
            with self._lock:
                self._keys[project_id] = cached
        return dict(cached.value)

    def api_key(self, token: str, prefix: str) -> tuple[int, str] | None:
        """(workspace id, role) for a valid API key, else None."""
        now = time.monotonic()
        cached = self._api_keys.get(prefix)
        if cached is None or cached.until < now:
            with Session(self.engine) as session:
                row = session.exec(select(ApiKey).where(ApiKey.prefix == prefix)).first()
                value = (
                    None if row is None or row.revoked_at is not None else (row.workspace_id, row.role, row.token_hash)
                )
            cached = _Cached(value, now + CACHE_SECONDS)
            with self._lock:
                self._api_keys[prefix] = cached
        if cached.value is None or not hashes_match(token, cached.value[2]):
            return None
        return int(cached.value[0]), str(cached.value[1])
