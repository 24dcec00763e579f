"""A bundle's identity is (project, bundle id): what ingest checks before it acknowledges a bundle.

Bundle ids are chosen by the app, so they are unique only within a project: the same id in two projects
is two bundles. Within one project the first bundle with an id wins. Sending the same bytes again (the
shipper's at-least-once retry) is acknowledged and stored once; a *different* bundle with an id the project
already has is refused (409 `duplicate_id`), so two bundles are never both "accepted" under one id.

Ingest knows a bundle two ways: the index (every stored bundle's SHA-256 is its `object_sha256`) and,
for bundles acknowledged into the WAL but not indexed yet, a bounded map in this process (`Identities`).
Entries leave the map once the index can answer for them (after `PENDING_SECONDS`) or when it is full,
oldest first. Known limit: with several ingest nodes, two different bundles with one id sent to two
nodes within the aggregator's lag are both acknowledged; the aggregator stores the first and counts the
other as a conflict (`Aggregator.conflicts`). If the index cannot answer (database down), the map alone
decides: acknowledging into the WAL matters more during an outage, and the aggregator keeps the first.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select

from fluxrun_server.index.models import Execution, Project, Workspace
from fluxrun_server.ingest.verify import Checked

__all__ = ["PENDING_MAX", "PENDING_SECONDS", "Identities", "IndexUnavailable", "identities_for"]

log = logging.getLogger("fluxrun_server.ingest")

PENDING_MAX = 50_000  # acknowledged bundles remembered until indexed: ~20 MB at most
PENDING_SECONDS = 600.0  # the index answers for a bundle well before this (the aggregator lags by ~0.1 s)
_PROJECT_NAMES_MAX = 10_000


class IndexUnavailable(Exception):
    """The index cannot say what a project is called (database down) and the name is not cached yet."""


class Identities:
    """Per server (one per index engine): project full names, and the bundles acknowledged but not indexed."""

    def __init__(self, engine: Engine, *, pending_max: int = PENDING_MAX, pending_seconds: float = PENDING_SECONDS):
        self.engine = engine
        self.pending_max = pending_max
        self.pending_seconds = pending_seconds
        self._pending: OrderedDict[tuple[int, str], tuple[bytes, float]] = OrderedDict()
        self._names: dict[int, str] = {}
        self._lock = threading.Lock()
        self._index_down = False

    def project_name(self, project_id: int) -> str:
        """`WORKSPACE/PROJECT`, what a bundle for this project must name (projects are never renamed)."""
        name = self._names.get(project_id)
        if name is None:
            try:
                with Session(self.engine) as session:
                    row = session.exec(
                        select(Workspace.name, Project.name)
                        .join(Project, col(Project.workspace_id) == Workspace.id)
                        .where(Project.id == project_id)
                    ).first()
            except SQLAlchemyError as exc:
                raise IndexUnavailable(type(exc).__name__) from None
            if row is None:  # a token whose project was deleted: no bundle can name it
                return f"\x00no project {project_id}"
            name = f"{row[0]}/{row[1]}"
            with self._lock:
                if len(self._names) >= _PROJECT_NAMES_MAX:
                    self._names.clear()
                self._names[project_id] = name
        return name

    def known(self, project_id: int, bundle_ids: Sequence[str]) -> dict[str, bytes]:
        """SHA-256 of the bundles of `project_id` among `bundle_ids` that the index already holds (blocking:
        call it off the event loop). Empty when the index does not answer."""
        if not bundle_ids:
            return {}
        try:
            with Session(self.engine) as session:
                rows = session.exec(
                    select(Execution.bundle_id, Execution.object_sha256).where(
                        Execution.project_id == project_id, col(Execution.bundle_id).in_(sorted(set(bundle_ids)))
                    )
                ).all()
        except SQLAlchemyError as exc:
            if not self._index_down:
                log.warning(
                    "the index does not answer (%s); bundle ids are checked against recent ones only",
                    type(exc).__name__,
                )
            self._index_down = True
            return {}
        if self._index_down:
            log.warning("the index answers again; bundle ids are checked against it")
            self._index_down = False
        return {bundle_id: bytes.fromhex(digest) for bundle_id, digest in rows if _is_hex(digest)}

    async def lookup(self, project_id: int, verdicts: Sequence[Checked]) -> dict[str, bytes]:
        """`known` for a batch's accepted bundles, on a thread (the event loop does not wait on the database)."""
        ids = [v.bundle_id for v in verdicts if v.reason is None and v.bundle_id is not None]
        return await asyncio.to_thread(self.known, project_id, ids) if ids else {}

    def conflicts(self, project_id: int, verdicts: Sequence[Checked], indexed: dict[str, bytes]) -> dict[int, str]:
        """Batch positions of accepted bundles whose id the project already has for a *different* bundle (in
        the index, among the acknowledged ones, or earlier in this batch), with the message to answer."""
        refused: dict[int, str] = {}
        seen: dict[str, bytes] = {}
        with self._lock:
            self._expire(time.monotonic())
            for index, verdict in enumerate(verdicts):
                bundle_id, digest = verdict.bundle_id, verdict.sha256
                if verdict.reason is not None or bundle_id is None or digest is None:
                    continue
                first = indexed.get(bundle_id) or seen.get(bundle_id)
                if first is None:
                    pending = self._pending.get((project_id, bundle_id))
                    first = pending[0] if pending is not None else None
                if first is not None and first != digest:
                    refused[index] = (
                        f"this project already has a different bundle with id {bundle_id!r} (sha256 "
                        f"{first.hex()[:16]}..., this one {digest.hex()[:16]}...); bundle ids must be unique "
                        "within a project, and the first one is kept"
                    )
                    continue
                seen[bundle_id] = digest
        return refused

    def claim(self, project_id: int, items: Sequence[tuple[str, bytes]]) -> None:
        """Remember `items` ((bundle id, SHA-256)) as acknowledged until the index can answer for them.
        Call it on the event loop with no await since `conflicts`, so two requests cannot both take one id."""
        now = time.monotonic()
        with self._lock:
            for bundle_id, digest in items:
                key = (project_id, bundle_id)
                if key not in self._pending:
                    self._pending[key] = (digest, now)
                    if len(self._pending) > self.pending_max:
                        self._pending.popitem(last=False)

    def release(self, project_id: int, items: Sequence[tuple[str, bytes]]) -> None:
        """Forget claims whose WAL append failed (the sender will retry them; they were not acknowledged)."""
        with self._lock:
            for bundle_id, digest in items:
                pending = self._pending.get((project_id, bundle_id))
                if pending is not None and pending[0] == digest:
                    del self._pending[(project_id, bundle_id)]

    def _expire(self, now: float) -> None:
        while self._pending:
            key, (_digest, since) = next(iter(self._pending.items()))
            if now - since < self.pending_seconds:
                return
            del self._pending[key]


def _is_hex(value: str) -> bool:
    try:
        bytes.fromhex(value)
    except (TypeError, ValueError):
        return False
    return True


_by_engine: weakref.WeakKeyDictionary[Engine, Identities] = weakref.WeakKeyDictionary()
_by_engine_lock = threading.Lock()


def identities_for(engine: Engine) -> Identities:
    """The one `Identities` of the server that indexes into `engine`."""
    found = _by_engine.get(engine)
    if found is None:
        with _by_engine_lock:
            found = _by_engine.get(engine)
            if found is None:
                found = _by_engine[engine] = Identities(engine)
    return found
