"""The data node's aggregation: WAL records -> object-store segments + SQL index, then checkpoint.

Order matters for crash safety: (1) write the segment object, (2) commit the index rows in one
transaction (inserting an execution whose bundle id exists is a no-op, so a replayed WAL record is
stored once), (3) checkpoint the WAL. A crash between any two steps replays the records on restart;
at worst a segment object is written twice and one copy is never referenced.

The server runs this in its own process (`fluxrun_server.ingest.aggregator_process`), reading the WAL
through a `WALReader`, so its CPU-bound Python does not compete for the GIL with the request path.
`Aggregator.start` still runs it on a thread of the calling process (tests, tools).
"""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any, Protocol

from sqlalchemy import Engine, Table, and_, case, func, literal, or_
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from fluxrun.bundle import read_bundle
from fluxrun.errors import BundleError
from fluxrun_server.index.models import Execution, Issue, utcnow
from fluxrun_server.ingest.records import unpack_record
from fluxrun_server.storage.base import ObjectStore
from fluxrun_server.storage.segments import SegmentWriter

__all__ = ["Aggregator", "RecordLog", "issue_fingerprint"]

log = logging.getLogger("fluxrun_server.aggregator")

SWITCH_INTERVAL_S = 0.0005
TEXT_TABLE_SQLITE = "execution_text"  # the FTS5 text index of migrations 0002 and 0004
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
    ) -> None:
        self.wal = wal
        self.store = store
        self.engine = engine
        self.batch = batch
        self.interval_s = interval_s
        self.linger_s = linger_s
        self.segment_target_bytes = segment_target_bytes
        self.on_pass = on_pass  # called after every pass that did something or failed (status reports)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.stored = 0
        self.duplicates = 0
        self.last_error: str | None = None
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
        """The aggregation loop, until `request_stop`."""
        while not self._stop.is_set():
            error = self.last_error
            try:
                moved = self.run_once()
                self.last_error = None
            except Exception as exc:  # keep going: the records stay in the WAL and are retried
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("aggregation failed; retrying")
                moved = 0
            if self.on_pass is not None and (moved or self.last_error != error):
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

    def run_once(self) -> int:
        """Move one batch of WAL records into storage; return how many records were consumed."""
        records = list(self.wal.read_from(self.wal.checkpointed_lsn, max_records=self.batch))
        if not records:
            return 0
        fresh: dict[str, tuple[int, bytes, dict[str, Any], str]] = {}
        for _lsn, record in records:
            project_id, data = unpack_record(record)
            try:
                sealed = read_bundle(data)
            except BundleError as exc:  # verified at ingest; a bad record here means disk damage
                log.error("skipping an unreadable WAL record: %s", exc)
                continue
            fresh.setdefault(sealed.bundle_id, (project_id, data, sealed.summary, sealed.signing_key_id))
        with Session(self.engine) as session:
            known = (
                set(session.exec(select(Execution.bundle_id).where(col(Execution.bundle_id).in_(list(fresh)))))
                if fresh
                else set()
            )
        self.duplicates += len(known)
        new = {bundle_id: item for bundle_id, item in fresh.items() if bundle_id not in known}
        if new:
            writer = SegmentWriter(self.store, target_bytes=self.segment_target_bytes)
            for bundle_id, (_project, data, _summary, _key) in new.items():
                writer.add(bundle_id, data)
            placements = {p.bundle_id: p for p in writer.flush()}
            self._index(new, placements)
            self.stored += len(new)
        self.wal.checkpoint(records[-1][0])
        return len(records)

    def _index(self, new: dict[str, tuple[int, bytes, dict[str, Any], str]], placements: dict[str, Any]) -> None:
        """Index one batch in one transaction: one multi-row issue upsert, then one executemany insert.

        Statement counts do not grow with the number of issues a batch touches, and the execution rows
        go through the driver's executemany (one prepared statement) rather than one giant VALUES list
        that SQLAlchemy would have to compile with tens of thousands of parameters.
        """
        groups: dict[tuple[int, str], list[tuple[str, dict[str, Any]]]] = defaultdict(list)
        for bundle_id, (project_id, _data, summary, _key) in new.items():
            groups[(project_id, issue_fingerprint(summary))].append((bundle_id, summary))
        now = utcnow()
        with Session(self.engine) as session:
            issue_ids = self._upsert_issues(session, groups, now)
            rows = []
            for (project_id, fingerprint), items in groups.items():
                issue_id = issue_ids[(project_id, fingerprint)]
                for bundle_id, summary in items:
                    rows.append(_execution_row(bundle_id, project_id, issue_id, fingerprint, summary, now))
                    row = rows[-1]
                    placement = placements[bundle_id]
                    row["signing_key_id"] = _text(new[bundle_id][3], 64)
                    row["object_key"] = placement.key
                    row["object_offset"] = placement.offset
                    row["object_length"] = placement.length
                    row["object_sha256"] = placement.sha256
            self._insert_executions(session, rows)
            session.commit()

    def _insert_executions(self, session: Session, rows: list[dict[str, Any]]) -> None:
        """executemany of the execution rows; a replayed bundle id is skipped (ON CONFLICT DO NOTHING).

        On SQLite the rows go to the driver as tuples, converted by the same bind processors SQLAlchemy
        would apply (the statement is compiled once): SQLAlchemy's per-row parameter handling cost ~45 µs a
        row here, more than SQLite's own insert. Then the batch's rows go into the FTS5 text index in one
        statement (migration 0004). Elsewhere it is a Core executemany.
        """
        table: Table = Execution.__table__  # type: ignore[attr-defined]
        insert = _insert(self.engine)(table).on_conflict_do_nothing(index_elements=["bundle_id"])
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
