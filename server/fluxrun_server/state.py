"""What one server process holds: settings, the index engine, the WAL, the object store, the aggregator,
and short-lived caches of tokens and signing keys (so ingest does not hit the database per request)."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import HTTPException
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, select

from fluxrun_server.auth import hashes_match
from fluxrun_server.index.models import ApiKey, ProjectToken, SigningKey
from fluxrun_server.ingest.log import AggregatorLink, EdgeLog
from fluxrun_server.settings import ServerSettings
from fluxrun_server.storage.base import ObjectStore

__all__ = ["CACHE_SECONDS", "ServerState"]

CACHE_SECONDS = 0.5  # a revoked token or key stops working within this many seconds, on every node


@dataclass
class _Cached:
    value: Any
    until: float
    fetched: float = 0.0  # when the database last answered for it (the outage allowance counts from here)


RETRY_AFTER_OUTAGE = "10"  # seconds, in the 503 of a lookup the database cannot answer


@dataclass
class ServerState:
    settings: ServerSettings
    engine: Engine
    wal: EdgeLog  # the local WriteAheadLog, or JetStream with FLUXRUN_SERVER_LOG_URL (ingest/log.py)
    store: ObjectStore
    aggregator: AggregatorLink
    _tokens: dict[str, _Cached] = field(default_factory=dict)
    _keys: dict[int, _Cached] = field(default_factory=dict)
    _api_keys: dict[str, _Cached] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _cached(self, cache: dict[Any, _Cached], key: Any, load: Callable[[], Any]) -> Any:
        """`load()`, cached for CACHE_SECONDS. With the database down, the last value it gave within
        `settings.auth_stale_s` stays valid (so ingest keeps acknowledging into the WAL through an outage;
        a revocation made meanwhile takes effect when the database is back), and without one the request
        gets 503 with Retry-After, never a 500. A failed reload is retried after CACHE_SECONDS, not per request."""
        now = time.monotonic()
        cached = cache.get(key)
        if cached is not None and cached.until >= now:
            return cached.value
        try:
            value = load()
        except SQLAlchemyError:
            if cached is not None and now - cached.fetched <= self.settings.auth_stale_s:
                with self._lock:
                    cache[key] = _Cached(cached.value, now + CACHE_SECONDS, cached.fetched)
                return cached.value
            raise HTTPException(
                503, "the server's database is unavailable; retry later", headers={"Retry-After": RETRY_AFTER_OUTAGE}
            ) from None
        with self._lock:
            cache[key] = _Cached(value, now + CACHE_SECONDS, now)
        return value

    def project_for_token(self, token: str, prefix: str) -> int | None:
        """The project an ingest token belongs to, or None if unknown, revoked or wrong."""

        def load() -> tuple[int, str] | None:
            with Session(self.engine) as session:
                row = session.exec(select(ProjectToken).where(ProjectToken.prefix == prefix)).first()
                return None if row is None or row.revoked_at is not None else (row.project_id, row.token_hash)

        value = self._cached(self._tokens, prefix, load)
        if value is None or not hashes_match(token, value[1]):
            return None
        return int(value[0])

    def signers(self, project_id: int) -> dict[str, Ed25519PublicKey]:
        def load() -> dict[str, Ed25519PublicKey]:
            with Session(self.engine) as session:
                rows = session.exec(
                    select(SigningKey).where(SigningKey.project_id == project_id, SigningKey.revoked_at == None)  # noqa: E711
                ).all()
                return {r.key_id: Ed25519PublicKey.from_public_bytes(base64.b64decode(r.public_key)) for r in rows}

        return dict(self._cached(self._keys, project_id, load))

    def api_key(self, token: str, prefix: str) -> tuple[int, str] | None:
        """(workspace id, role) for a valid API key, else None."""

        def load() -> tuple[int, str, str] | None:
            with Session(self.engine) as session:
                row = session.exec(select(ApiKey).where(ApiKey.prefix == prefix)).first()
                return (
                    None if row is None or row.revoked_at is not None else (row.workspace_id, row.role, row.token_hash)
                )

        value = self._cached(self._api_keys, prefix, load)
        if value is None or not hashes_match(token, value[2]):
            return None
        return int(value[0]), str(value[1])
