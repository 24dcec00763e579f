"""The data node's aggregation: WAL records -> object-store segments + SQL index, then checkpoint.

Order matters for crash safety: (1) write the segment object, (2) commit the index rows in one
transaction (inserting an execution whose bundle id exists is a no-op, so a replayed WAL record is
stored once), (3) checkpoint the WAL. A crash between any two steps replays the records on restart;
at worst a segment object is written twice and one copy is never referenced.

The server runs this in its own process (`fluxrun_server.ingest.aggregator_process`), reading the WAL
through a `WALReader`, so its CPU-bound Python does not compete for the GIL with the request path.
`Aggregator.start` still runs it on a thread of the calling process (tests, tools).

Poison records: a record that cannot be stored (unreadable, or a summary the index refuses) must not stop
indexing for everyone. When a batch fails while the index and the store answer (`probe`), the batch is
split in halves until the failing records stand alone; each is then tried once more and, failing again,
moved to the quarantine (its bytes in the object store under `quarantine/`, a `QuarantinedRecord` row),
and the rest of the batch is stored. A failure while the index or the store does not answer is an
outage: nothing is quarantined, the batch stays in the WAL, and the loop backs off exponentially (capped
at `max_backoff_s`), logging once when the state changes (failing, a different failure, recovered).
"""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, Protocol

from sqlalchemy import Engine, Table, and_, case, func, literal, or_, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col, select

from fluxrun.bundle import read_bundle
from fluxrun.errors import BundleError
from fluxrun_server.index.models import Execution, Issue, QuarantinedRecord, utcnow
from fluxrun_server.ingest.records import unpack_record
from fluxrun_server.storage.base import ObjectStore, ObjectStoreError
from fluxrun_server.storage.segments import SegmentWriter

__all__ = ["Aggregator", "RecordLog", "describe_error", "issue_fingerprint"]

log = logging.getLogger("fluxrun_server.aggregator")

SWITCH_INTERVAL_S = 0.0005
TEXT_TABLE_SQLITE = "execution_text"  # the FTS5 text index of migrations 0002 and 0004
MAX_BACKOFF_S = 30.0
QUARANTINE_PREFIX = "quarantine/"
_PROBE_KEY = "quarantine/.probe"  # never written: `exists` on it tells whether the store answers
# SQLSTATE classes of a database that is unreachable or busy, not of a bad row: connection exception,
# insufficient resources, operator intervention (shutdown), transaction rollback (deadlock, serialization)
_OUTAGE_SQLSTATES = ("08", "53", "57", "40")
# an item of a batch: (lsn, project id, bundle bytes, summary, signing key id)
_Item = tuple[int, int, bytes, dict[str, Any], str]
# the SQLite insert: its SQL, a getter of a row's values in its column order, (position, converter) pairs
_CompiledInsert = tuple[str, Callable[[dict[str, Any]], tuple[Any, ...]], list[tuple[int, Any]]]


class RecordLog(Protocol):
    """What the aggregator reads: a `WriteAheadLog` in the same process, or a `WALReader` in another."""

    @property
    def checkpointed_lsn(self) -> int: ...

    def read_from(self, lsn_exclusive: int, max_records: int | None = None) -> Iterator[tuple[int, bytes]]: ...

    def checkpoint(self, lsn: int) -> None: ...


def issue_fingerprint(summary: dict[str, Any]) -> str:
    """The SDK's fingerprint for exceptions; 5xx answers without one group by method, route and status."""
    fingerprint = summary.get("fingerprint")
    if fingerprint:
        return str(fingerprint)[:64]
    key = f"{summary.get('method')} {summary.get('route')} {summary.get('status')}"
    return "status-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _text(value: Any, limit: int) -> str | None:
    return None if value is None else str(value)[:limit]


def _when(value: Any) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except (TypeError, ValueError):
        return utcnow()


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """`Type: first line` of an error, without the SQL or parameters a driver error carries (they may hold
    another tenant's data, and this text reaches /healthz and the logs)."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    first = (str(cause).strip().splitlines() or [""])[0]
    return _printable(f"{type(cause).__name__}: {first}", limit)


def _printable(value: str, limit: int) -> str:
    """At most `limit` printable characters: safe for any text column (no NUL, no lone surrogate)."""
    return "".join(c if c.isprintable() else "?" for c in value[:limit])


def _is_outage(exc: BaseException) -> bool:
    """A failure of the index or the store themselves (down, busy, unreachable), not of the records."""
    if isinstance(exc, ObjectStoreError):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if sqlstate is not None:
            return str(sqlstate)[:2] in _OUTAGE_SQLSTATES
        message = str(exc.orig).lower()
        return any(word in message for word in ("locked", "busy", "disk", "unable to open", "connect"))
    return False


class Aggregator:
    def __init__(
        self,
        wal: RecordLog,
        store: ObjectStore,
        engine: Engine,
        *,
        on_pass: Callable[[Aggregator], None] | None = None,
        batch: int = 2000,
        interval_s: float = 0.05,
        linger_s: float = 0.1,
        segment_target_bytes: int = 8 * 1024 * 1024,
        max_backoff_s: float = MAX_BACKOFF_S,
    ) -> None:
        self.wal = wal
        self.store = store
        self.engine = engine
        self.batch = batch
        self.interval_s = interval_s
        self.linger_s = linger_s
        self.segment_target_bytes = segment_target_bytes
        self.max_backoff_s = max_backoff_s
        self.on_pass = on_pass  # called after every pass that did something or failed (status reports)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.stored = 0
        self.duplicates = 0
        self.quarantined = 0
        self.last_error: str | None = None
        self.failing_since: float | None = None  # time.time() of the first failed pass of the current outage
        self.backoff_s = 0.0
        self._sqlite_insert: _CompiledInsert | None = None
        self._sqlite_text_table: bool | None = None

    def start(self) -> None:
        """Run the aggregation loop on a thread of this process (the server uses a process instead)."""
        # This thread is CPU-bound Python next to whatever else runs here: with the default 5 ms switch
        # interval every GIL handoff to another thread can wait 5 ms.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self._thread = threading.Thread(target=self.run, name="fluxrun-aggregator", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)

    def request_stop(self) -> None:
        """Stop after the current pass (`run` returns)."""
        self._stop.set()
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def run(self) -> None:
        """The aggregation loop, until `request_stop`; backs off while passes fail (see the module doc)."""
        while not self._stop.is_set():
            error = self.last_error
            try:
                moved = self.run_once()
            except Exception as exc:  # keep going: the records stay in the WAL and are retried
                self._failed(exc)
                if self.on_pass is not None:
                    self.on_pass(self)
                self._stop.wait(self.backoff_s)  # new records do not cut a backoff short
                continue
            if self.last_error is not None:
                log.warning("aggregation recovered after %.1f s of failures", time.time() - (self.failing_since or 0))
            self.last_error, self.failing_since, self.backoff_s = None, None, 0.0
            if self.on_pass is not None and (moved or error is not None):
                self.on_pass(self)
            if moved >= self.batch:
                continue  # behind: the next batch is already waiting
            if moved:
                # Caught up: let the next records gather for a moment, so that one pass (a segment object, a
                # commit and a checkpoint: four fsyncs that queue with the WAL's own) covers many requests
                # rather than each one. Costs at most linger_s of visibility.
                self._stop.wait(self.linger_s)
                continue
            self._wake.wait(self.interval_s)
            self._wake.clear()

    def _failed(self, exc: BaseException) -> None:
        """Note a failed pass: double the backoff (capped), log only when the failure is new or different."""
        message = describe_error(exc)
        previous = self.last_error
        if previous is None:
            self.failing_since = time.time()
            # an outage in one line; anything else with its traceback, once
            log.error("aggregation is failing; retrying with backoff (up to %.0f s): %s", self.max_backoff_s, message,
                      exc_info=None if _is_outage(exc) else exc)  # fmt: skip
        elif previous.split(":", 1)[0] != message.split(":", 1)[0]:
            log.error("aggregation is still failing, now with: %s", message)
        self.last_error = message
        self.backoff_s = min(self.max_backoff_s, max(self.interval_s, self.backoff_s * 2))

    def probe(self) -> None:
        """Raise if the index or the object store does not answer (an outage, not a bad record)."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        self.store.exists(_PROBE_KEY)

    def run_once(self) -> int:
        """Move one batch of WAL records into storage; return how many records were consumed."""
        records = list(self.wal.read_from(self.wal.checkpointed_lsn, max_records=self.batch))
        if not records:
            return 0
        fresh: dict[str, _Item] = {}
        poison: list[tuple[int, bytes, int | None, str | None, str]] = []
        by_lsn = dict(records)
        bundle_ids: dict[int, str] = {}  # by LSN, for the quarantine rows
        for lsn, record in records:
            project_id: int | None = None
            try:
                project_id, data = unpack_record(record)
                sealed = read_bundle(data)
                bundle_id = sealed.bundle_id
                if not isinstance(bundle_id, str) or not bundle_id or not isinstance(sealed.summary, dict):
                    raise BundleError("malformed", "the bundle id or the summary has the wrong type")
            except Exception as exc:  # verified at ingest: a bad record here means damage or a bug
                poison.append((lsn, record, project_id, None, f"unreadable record: {describe_error(exc)}"))
                continue
            bundle_ids[lsn] = bundle_id
            # keyed by (project, bundle id), the identity (migration 0006): one id may be in two projects
            fresh.setdefault(
                _stored_as(project_id, bundle_id), (lsn, project_id, data, sealed.summary, sealed.signing_key_id)
            )
        for (_name, (lsn, project_id, _data, _summary, _key)), reason in self._store(list(fresh.items())):
            poison.append((lsn, by_lsn[lsn], project_id, bundle_ids[lsn], reason))
        if poison:
            self._quarantine(poison)
        self.wal.checkpoint(records[-1][0])
        return len(records)

    def _store(self, items: list[tuple[str, _Item]]) -> list[tuple[tuple[str, _Item], str]]:
        """Store `items`; the ones that cannot be stored while storage answers are returned with the reason.

        Raises on an outage. The common case is one attempt; a poison record costs about 2 log2(n) more.
        """
        if not items:
            return []
        try:
            self._store_group(dict(items))
            return []
        except Exception as exc:
            if _is_outage(exc):
                raise
            self.probe()  # raises if the index or the store is down: then it is an outage after all
            if len(items) > 1:
                half = len(items) // 2
                return self._store(items[:half]) + self._store(items[half:])
            reason = describe_error(exc)
        try:  # alone and failing: once more, so a passing glitch does not quarantine a good record
            self._store_group(dict(items))
            return []
        except Exception as exc:
            if _is_outage(exc):
                raise
            self.probe()
            log.error("quarantined bundle %s: %s", _printable(items[0][0], 80), reason)
            return [(items[0], reason)]

    def _store_group(self, fresh: dict[str, _Item]) -> None:
        """Segment object then index rows for the bundles of `fresh` not stored yet (one transaction)."""
        with Session(self.engine) as session:
            ids = sorted({_bundle_id_of(key) for key in fresh})
            pairs = session.exec(
                select(Execution.project_id, Execution.bundle_id).where(col(Execution.bundle_id).in_(ids))
            )
            known = {_stored_as(project_id, bundle_id) for project_id, bundle_id in pairs}
        self.duplicates += len(known)
        new = {bundle_id: item for bundle_id, item in fresh.items() if bundle_id not in known}
        if not new:
            return
        writer = SegmentWriter(self.store, target_bytes=self.segment_target_bytes)
        for bundle_id, (_lsn, _project, data, _summary, _key) in new.items():
            writer.add(bundle_id, data)
        placements = {p.bundle_id: p for p in writer.flush()}
        self._index(new, placements)
        self.stored += len(new)

    def _quarantine(self, poison: list[tuple[int, bytes, int | None, str | None, str]]) -> None:
        """Keep each poison record's bytes in the store and a row in the index; raises on an outage."""
        rows = []
        for lsn, record, project_id, bundle_id, reason in poison:
            digest = hashlib.sha256(record).hexdigest()
            key = f"{QUARANTINE_PREFIX}{lsn:020d}-{digest[:16]}.rec"
            self.store.put(key, record)
            rows.append(
                QuarantinedRecord(
                    project_id=project_id if project_id is not None and project_id < 2**31 else None,
                    bundle_id=None if bundle_id is None else _printable(bundle_id, 128),
                    wal_lsn=lsn,
                    reason=_printable(reason, 2000),
                    object_key=key,
                    record_bytes=len(record),
                    record_sha256=digest,
                )
            )
        with Session(self.engine) as session:
            session.add_all(rows)
            session.commit()
        self.quarantined += len(rows)
        log.warning(
            "moved %d record(s) the index refused to the quarantine (fluxrun server quarantine list)", len(rows)
        )

    def _index(self, new: dict[str, _Item], placements: dict[str, Any]) -> None:
        """Index one batch in one transaction: one multi-row issue upsert, then one executemany insert.

        Statement counts do not grow with the number of issues a batch touches, and the execution rows
        go through the driver's executemany (one prepared statement) rather than one giant VALUES list
        that SQLAlchemy would have to compile with tens of thousands of parameters.
        """
        groups: dict[tuple[int, str], list[tuple[str, dict[str, Any]]]] = defaultdict(list)
        for bundle_id, (_lsn, project_id, _data, summary, _key) in new.items():
            groups[(project_id, issue_fingerprint(summary))].append((bundle_id, summary))
        now = utcnow()
        with Session(self.engine) as session:
            issue_ids = self._upsert_issues(session, groups, now)
            rows = []
            for (project_id, fingerprint), items in groups.items():
                issue_id = issue_ids[(project_id, fingerprint)]
                for bundle_id, summary in items:
                    rows.append(
                        _execution_row(_bundle_id_of(bundle_id), project_id, issue_id, fingerprint, summary, now)
                    )
                    row = rows[-1]
                    placement = placements[bundle_id]
                    row["signing_key_id"] = _text(new[bundle_id][4], 64)
                    row["object_key"] = placement.key
                    row["object_offset"] = placement.offset
                    row["object_length"] = placement.length
                    row["object_sha256"] = placement.sha256
            self._insert_executions(session, rows)
            session.commit()

    def _insert_executions(self, session: Session, rows: list[dict[str, Any]]) -> None:
        """executemany of the execution rows; a replayed bundle id is skipped (ON CONFLICT DO NOTHING).

        On SQLite the rows go to the driver as tuples, converted by the same bind processors SQLAlchemy
        would apply (the statement is compiled once): SQLAlchemy's per-row parameter handling cost more than
        SQLite's own insert. Then the batch's rows go into the FTS5 text index in one
        statement (migration 0004). Elsewhere it is a Core executemany.
        """
        table: Table = Execution.__table__  # type: ignore[attr-defined]
        insert = _insert(self.engine)(table).on_conflict_do_nothing(index_elements=["bundle_id", "project_id"])
        connection = session.connection()
        if self.engine.dialect.name != "sqlite":
            connection.execute(insert, rows)
            return
        if self._sqlite_insert is None:
            dialect = self.engine.dialect
            compiled = insert.compile(dialect=dialect, column_keys=list(rows[0]))
            names = list(compiled.positiontup or ())
            processors = [table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names]
            converters = [(i, convert) for i, convert in enumerate(processors) if convert is not None]
            self._sqlite_insert = (str(compiled), itemgetter(*names), converters)
        sql, getter, converters = self._sqlite_insert
        values: list[tuple[Any, ...]] = []
        memo: dict[int, tuple[Any, Any]] = {}  # per column: the last value and its conversion (received_at repeats)
        for row in rows:
            value = list(getter(row))
            for i, convert in converters:
                raw = value[i]
                last = memo.get(i)
                if last is not None and last[0] is raw:
                    value[i] = last[1]
                else:
                    value[i] = converted = convert(raw)
                    memo[i] = (raw, converted)
            values.append(tuple(value))
        # The issue upsert before this took the write lock, so no other writer can insert or delete executions
        # until the commit: the batch's rows are exactly those above the highest rowid read here.
        top = connection.exec_driver_sql("SELECT coalesce(max(rowid), 0) FROM execution").scalar_one()
        connection.exec_driver_sql(sql, values)
        if self._sqlite_text_table is None:
            self._sqlite_text_table = bool(
                connection.exec_driver_sql(
                    f"SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '{TEXT_TABLE_SQLITE}'"
                ).scalar_one()
            )
        if self._sqlite_text_table:  # one statement per batch (migration 0004 says why not a trigger)
            connection.exec_driver_sql(
                f"INSERT INTO {TEXT_TABLE_SQLITE}(rowid, route, error_type, error_message) "
                "SELECT rowid, route, error_type, error_message FROM execution WHERE rowid > ?",
                (top,),
            )

    def _upsert_issues(
        self, session: Session, groups: dict[tuple[int, str], list[tuple[str, dict[str, Any]]]], now: datetime
    ) -> dict[tuple[int, str], int]:
        """Insert new issues and bump existing ones in one statement per chunk; returns their ids by key.

        Keys are sorted so concurrent aggregators (several ingest nodes on one PostgreSQL) lock issue rows
        in the same order and cannot deadlock each other. An issue that was resolved or guarded and is
        seen again becomes regressed.
        """
        values = []
        for project_id, fingerprint in sorted(groups):
            items = groups[(project_id, fingerprint)]
            first = items[0][1]
            error = first.get("error") or {}
            seen = [_when(summary.get("started_at")) for _, summary in items]
            values.append(
                {
                    "project_id": project_id,
                    "fingerprint": fingerprint,
                    "error_type": _text(error.get("type") or f"HTTP {first.get('status')}", 300),
                    "message": _text(error.get("message"), 2000),
                    "route": _text(first.get("route"), 500),
                    "count": len(items),
                    "first_seen": min(seen),
                    "last_seen": max(seen),
                    "status": "open",
                }
            )
        ids: dict[tuple[int, str], int] = {}
        if not values:
            return ids
        table: Table = Issue.__table__  # type: ignore[attr-defined]
        issue = table.c
        greatest = func.max if self.engine.dialect.name == "sqlite" else func.greatest
        statement = _insert(self.engine)(table)
        excluded = statement.excluded
        reappeared = and_(or_(issue.status == "resolved", issue.status == "guarded"), issue.count > 0)
        statement = statement.on_conflict_do_update(
            index_elements=["project_id", "fingerprint"],
            set_={
                "count": issue.count + excluded["count"],
                "last_seen": greatest(issue.last_seen, excluded.last_seen),
                "status": case((reappeared, "regressed"), else_=issue.status),
                "status_changed_at": case(
                    (reappeared, literal(now, issue.status_changed_at.type)), else_=issue.status_changed_at
                ),
            },
        ).returning(issue.id, issue.project_id, issue.fingerprint)
        # executemany with RETURNING: SQLAlchemy's "insertmanyvalues" sends it as a few multi-row statements
        # from one cached compilation.
        for issue_id, project_id, fingerprint in session.connection().execute(statement, values):
            ids[(project_id, fingerprint)] = issue_id
        return ids


def _stored_as(project_id: int, bundle_id: str) -> str:
    """A bundle's name within a batch and its segment: `PROJECT_ID/BUNDLE_ID` (ingest allows no '/' in ids)."""
    return f"{project_id}/{bundle_id}"


def _bundle_id_of(stored_as: str) -> str:
    return stored_as.partition("/")[2]


def _execution_row(
    bundle_id: str, project_id: int, issue_id: int, fingerprint: str, summary: dict[str, Any], now: datetime
) -> dict[str, Any]:
    error = summary.get("error") or {}
    status = summary.get("status")
    duration = summary.get("duration_ms")
    return {
        "bundle_id": bundle_id,
        "project_id": project_id,
        "issue_id": issue_id,
        "received_at": now,
        "started_at": _when(summary.get("started_at")),
        "route": _text(summary.get("route"), 500),
        "method": _text(summary.get("method"), 16),
        "status": status if isinstance(status, int) else None,
        "outcome": _text(summary.get("outcome"), 32),
        "error_type": _text(error.get("type"), 300),
        "error_message": _text(error.get("message"), 2000),
        "fingerprint": fingerprint,
        "duration_ms": duration if isinstance(duration, (int, float)) else None,
        "release": _text(summary.get("release"), 200),
        "environment": _text(summary.get("environment"), 200),
        "request_id": _text(summary.get("request_id"), 200),
        "trace_id": _text(summary.get("trace_id"), 64),
        "event_count": len(summary.get("events") or []),
        "summary": summary,
    }


def _insert(engine: Engine) -> Any:
    return postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
