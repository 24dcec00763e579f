"""psycopg 3, sync and async: connections, statements (with what they returned) and transaction calls.

Capture patches `Connection.connect`, `Cursor.execute`/`executemany` and `Connection.commit`/`rollback`
(and their async twins). After a statement runs, its rows are read once as tuples (up to the row limit)
and the cursor scrolled back, so the app reads the live result exactly as it would have; SQLAlchemy's
psycopg dialect goes through the same methods, so Core and ORM are recorded with no declaration.

At replay `connect` returns a connection with no server behind it: a real `psycopg.Connection` (or
`AsyncConnection`) built on a stand-in libpq connection that carries the recorded server version and
parameters. Its cursors are real psycopg cursors whose `execute` is answered from the recording: a
stand-in result gives `description` (names and type OIDs, so row factories such as `dict_row` work),
`rowcount` and `statusmessage`, and `fetch*` serve the recorded rows. `transaction()` blocks are recorded
as `begin` and `commit`/`rollback` calls (with their savepoint name, if any) and answered at replay, where
the block's bookkeeping runs and its commands go nowhere. Connections are profiled when they open, in an
execution or not (db_common: setup profiles), so a warm pool replays in a fresh process.
A server-side (named) cursor is recorded as one `declare` statement with the rows the app fetched from it, in
order, and answered at replay with those rows (fetching past them is refused); `stream()` likewise, as one
`stream` statement, with an error that came after some rows raised after them. `COPY` is not intercepted.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from sys import _getframe
from typing import Any

from fluxrun._context import Scope, current, scope_var
from fluxrun._internal import report_internal_error
from fluxrun._replay_mode import replaying_here
from fluxrun.errors import LiveIOBlocked
from fluxrun.interceptors import db_common as db
from fluxrun.interceptors.base import Patch, loaded, raise_recorded_error
from fluxrun.interceptors.hot_path import end_call
from fluxrun.interceptors.unrecorded import unrecorded_method
from fluxrun.model.recording import CallEntry
from fluxrun.model.schema import AnyEvent
from fluxrun.model.values import decode

__all__ = ["PsycopgInterceptor"]

DRIVER = "psycopg"

# cursors answered from a recording: cursor -> the rows left to read
_replayed: weakref.WeakKeyDictionary[Any, db.RowBuffer] = weakref.WeakKeyDictionary()
# its dict of weak references, whose truth is tested in C: `if _replayed` calls WeakKeyDictionary.__len__, a
# Python method, twice per idle statement. Empty outside replays, so the idle path reads nothing else.
_replayed_refs: dict[Any, db.RowBuffer] = _replayed.data  # type: ignore[attr-defined]


# -- the stand-in libpq objects of a replayed connection ----------------------------------------------------
class _ReplayedPGconn:
    """What psycopg reads of a libpq connection, from the recorded connect: no socket, never connected."""

    def __init__(self, pq: Any, recorded: dict[str, Any]) -> None:
        self.pq = pq
        self.status = pq.ConnStatus.OK
        self.transaction_status = pq.TransactionStatus.IDLE
        self.server_version = int(recorded.get("server_version") or 0)
        self.protocol_version = 3
        self.backend_pid = 0
        self.socket = -1
        self.notice_handler: Any = None
        self.notify_handler: Any = None
        self._parameters = {k.encode(): str(v).encode() for k, v in (recorded.get("parameters") or {}).items()}
        encoding = self._parameters.get(b"client_encoding", b"UTF8").decode().lower()
        self._encoding = "utf-8" if encoding in ("utf8", "unicode") else encoding
        for name in ("host", "port", "db", "user", "hostaddr", "options"):
            setattr(self, name, str(recorded.get(name) or "").encode())
        self.password = b""
        self.ssl_in_use = False
        self.used_password = False
        self.used_gssapi = False
        self.pipeline_status = pq.PipelineStatus.OFF
        self.error_message = b""

    def parameter_status(self, name: bytes) -> bytes | None:
        return self._parameters.get(name)

    def finish(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        raise LiveIOBlocked(
            f"psycopg tried to use its connection ({name}) during a replay; the recording answers statements, "
            "commits and rollbacks only (not COPY, pipeline mode, notifications or large objects)"
        )


class _ReplayedResult:
    """What psycopg reads of a libpq result to build `description` and row factories."""

    def __init__(self, pq: Any, result: dict[str, Any]) -> None:
        self.recorded = result
        self.columns = decode(result.get("description")) or []
        self.status = pq.ExecStatus.TUPLES_OK if result.get("description") is not None else pq.ExecStatus.COMMAND_OK
        self.nfields = len(self.columns)
        self.ntuples = len(result.get("rows") or [])
        self.command_status = str(result.get("status") or "").encode() or None
        self.command_tuples = result.get("rowcount")
        self.oid_value = 0

    def fname(self, index: int) -> bytes:
        return str(self.columns[index][0]).encode()

    def ftype(self, index: int) -> int:
        return int(self.columns[index][1])

    def fmod(self, index: int) -> int:
        return int(self.columns[index][2])

    def fsize(self, index: int) -> int:
        return int(self.columns[index][3])

    def fformat(self, index: int) -> int:
        return 0


def _connect_data(conn: Any, target: str) -> dict[str, Any]:
    info = conn.info
    parameters = {}
    for name in db.PG_PARAMETERS:
        with contextlib.suppress(Exception):
            value = info.parameter_status(name)
            if value is not None:
                parameters[name] = value
    return {
        "driver": DRIVER,
        "op": "connect",
        "target": target,
        "server_version": info.server_version,
        "parameters": parameters,
        "host": info.host,
        "port": info.port,
        "db": info.dbname,
        "user": info.user,
    }


def _target(conninfo: Any, kwargs: dict[str, Any]) -> str:
    return db.connect_target(conninfo, kwargs, ("context", "row_factory", "cursor_factory"))


# -- recording a statement's answer ---------------------------------------------------------------------------
def _snapshot(cursor: Any, tuple_row: Any, limit: int) -> dict[str, Any]:
    """What the statement returned, read as tuples and the cursor put back where it was (position 0)."""
    result = cursor.pgresult
    description = None
    rows: list[Any] = []
    more = False
    if cursor.description is not None and result is not None:
        description = [[c.name, c.type_code, result.fmod(i), result.fsize(i)] for i, c in enumerate(cursor.description)]
        factory = cursor.row_factory
        cursor.row_factory = tuple_row
        try:
            rows = cursor.fetchmany(limit) if limit else []
            more = result.ntuples > limit
            if rows:
                cursor.scroll(0, "absolute")
        finally:
            cursor.row_factory = factory
    return db.rows_result(
        rows,
        limit=limit,
        more=more,
        description=description,
        rowcount=cursor.rowcount,
        status=cursor.statusmessage,
        transaction_status=int(cursor.connection.info.transaction_status),
    )


async def _asnapshot(cursor: Any, tuple_row: Any, limit: int) -> dict[str, Any]:
    """`_snapshot` for an async cursor, whose fetch and scroll are coroutines."""
    result = cursor.pgresult
    description = None
    rows: list[Any] = []
    more = False
    if cursor.description is not None and result is not None:
        description = [[c.name, c.type_code, result.fmod(i), result.fsize(i)] for i, c in enumerate(cursor.description)]
        factory = cursor.row_factory
        cursor.row_factory = tuple_row
        try:
            rows = await cursor.fetchmany(limit) if limit else []
            more = result.ntuples > limit
            if rows:
                await cursor.scroll(0, "absolute")
        finally:
            cursor.row_factory = factory
    return db.rows_result(
        rows,
        limit=limit,
        more=more,
        description=description,
        rowcount=cursor.rowcount,
        status=cursor.statusmessage,
        transaction_status=int(cursor.connection.info.transaction_status),
    )


_STATEMENTS_CACHED = 1024  # statement texts whose normalised text and label each execute patch keeps

_TUPLE_STATUSES = frozenset({2, 9, 12})  # ExecStatus TUPLES_OK, SINGLE_TUPLE, TUPLES_CHUNK: a result with rows


def _direct_answer(cursor: Any, limit: int) -> tuple[Any, ...] | dict[str, Any] | None:
    """What the statement returned, taken straight from the result without touching the cursor (no Column
    objects, no row factory swapped, no fetch and scroll back): the rows loaded by the cursor's own loader
    and the cursor's counts and status now, everything else read from libpq's result (immutable, held until
    then) and formatted by `_answer_data` only if the execution is kept. A result with more rows than
    `limit` is formatted at once, so that no large result is held. None when this psycopg lacks the
    internals read here (`_tx.load_rows`, `_rowcount`, `_statusmessage`, `_pgconn._encoding`):
    use `_snapshot`."""
    if not (_internals_by_class.get(type(cursor)) or _has_internals(type(cursor))):
        return None
    result = cursor.pgresult
    pgconn = cursor._pgconn
    if result is None or not (result.nfields or result.status in _TUPLE_STATUSES):
        return (None, None, None, cursor._rowcount, cursor._statusmessage, pgconn.transaction_status, limit)
    count = result.ntuples
    rows = cursor._tx.load_rows(0, min(count, limit), tuple) if limit and count else ()
    taken = (result, pgconn._encoding, rows, cursor._rowcount, cursor._statusmessage, pgconn.transaction_status, limit)
    return _answer(taken) if count > limit else taken


def _has_internals(cls: type) -> bool:
    names = ("_pgconn", "_tx", "_rowcount", "_statusmessage", "_encoding")
    found = _internals_by_class[cls] = all(hasattr(cls, name) for name in names)
    return found


_internals_by_class: dict[type, bool] = {}  # cursor class -> has what `_direct_answer` reads


def _answer(taken: tuple[Any, ...]) -> dict[str, Any]:
    """`_direct_answer`'s tuple as the event's `result`, field for field what `_snapshot` records."""
    result, encoding, kept, rowcount, status, transaction_status, limit = taken
    out: dict[str, Any] = {
        "description": None,
        "rows": [],
        "rowcount": rowcount,
        "lastrowid": None,
        "status": status.decode() if status else None,
        "transaction_status": int(transaction_status),
    }
    if result is None:
        return out
    # names (text, at most 63 bytes) and integers: plain values, recorded as they are (what `rows_result` copies)
    description = []
    for i in range(result.nfields):
        name = result.fname(i)
        description.append(
            [name.decode(encoding) if name else f"column_{i + 1}", result.ftype(i), result.fmod(i), result.fsize(i)]
        )
    out["description"] = description
    out["rows"], zones = db.encode_rows(kept)  # the loader's own tuples, which nothing else holds
    if zones:
        out["zones"] = zones
    if result.ntuples > limit:
        out["truncated"] = True
        out["limit"] = limit
    return out


# a statement's `build`: its answer, if taken by `_direct_answer`, formatted when sealed
_answer_data = db.answer_build(_answer, "psycopg capture")


async def _asafe_snapshot(cursor: Any, tuple_row: Any) -> tuple[Any, ...] | dict[str, Any] | None:
    try:
        limit = db.row_limit()
        direct = _direct_answer(cursor, limit)
        return direct if direct is not None else await _asnapshot(cursor, tuple_row, limit)
    except Exception as exc:
        report_internal_error("psycopg capture", exc)
        return None


def _with_sets(cursor: Any, first: Any, tuple_row: Any, limit: int) -> dict[str, Any]:
    """The first result set's answer with the others under `sets` (`nextset()` moves through them), each read as
    `_snapshot` reads one; the cursor is left on the first set, as the statement left it."""
    answer = _answer(first) if type(first) is tuple else dict(first)
    rowcount = cursor._rowcount
    sets = []
    for index in range(1, len(cursor._results)):
        cursor._select_current_result(index)
        sets.append(_snapshot(cursor, tuple_row, limit))
    cursor._select_current_result(0)
    cursor._rowcount = rowcount
    answer["sets"] = sets
    return answer


async def _asafe_sets(cursor: Any, first: Any, tuple_row: Any) -> Any:
    """`_awith_sets`, or the first set alone if the others cannot be read (never an error in the app's statement)."""
    try:
        return await _awith_sets(cursor, first, tuple_row, db.row_limit())
    except Exception as exc:
        report_internal_error("psycopg capture", exc)
        return first


async def _awith_sets(cursor: Any, first: Any, tuple_row: Any, limit: int) -> dict[str, Any]:
    """`_with_sets` for an async cursor."""
    answer = _answer(first) if type(first) is tuple else dict(first)
    rowcount = cursor._rowcount
    sets = []
    for index in range(1, len(cursor._results)):
        cursor._select_current_result(index)
        sets.append(await _asnapshot(cursor, tuple_row, limit))
    cursor._select_current_result(0)
    cursor._rowcount = rowcount
    answer["sets"] = sets
    return answer


def _serve_into(scope: Scope, cursor: Any, op: str, query: Any, params: Any, pq: Any, asynchronous: bool) -> None:
    """Answer a statement from the recording into a real psycopg cursor; nothing is sent anywhere."""
    event = db.serve(scope, DRIVER, op, db.normalise_sql(query), params, conn=cursor._conn)
    result = _load_answer(cursor, event, pq)
    if not isinstance(cursor, (_ReplayedRows, _AsyncReplayedRows)):
        home: type = cursor.__class__
        cursor.__class__ = _replayed_class(home, asynchronous)
    _replayed[cursor] = db.RowBuffer(
        db.recorded_rows(result),
        truncated=bool(result.get("truncated")),
        refuse=lambda: db.refuse_truncated(scope, event),
    )


def _load_answer(cursor: Any, event: AnyEvent, pq: Any) -> dict[str, Any]:
    """Put a recorded answer's result in a real psycopg cursor (a stand-in libpq result: description, row
    factory, rowcount, status) and the connection's transaction status; returns the recorded result."""
    result: dict[str, Any] = event["data"].get("result") or {}
    fake = _ReplayedResult(pq, result)
    cursor._reset()
    sets = result.get("sets")
    cursor._results = [fake, *(_ReplayedResult(pq, s) for s in sets if isinstance(s, dict))] if sets else [fake]
    _show_result(cursor, fake)
    cursor._rowcount = result.get("rowcount", -1) if result.get("rowcount") is not None else -1
    _set_transaction_status(cursor.connection, result, pq)
    return result


def _show_result(cursor: Any, fake: _ReplayedResult) -> None:
    """Make a recorded result set the cursor's current one (its description, row maker, counts, status)."""
    cursor.pgresult = fake
    cursor._statusmessage = fake.command_status
    cursor._rowcount = fake.command_tuples if fake.command_tuples is not None else -1
    cursor._make_row = cursor._make_row_maker() if fake.recorded.get("description") is not None else None


def _next_set(cursor: Any, buffer: db.RowBuffer) -> bool | None:
    """`nextset()` on a replayed cursor: the next recorded result set and its rows, None after the last."""
    if cursor._iresult >= len(cursor._results) - 1:
        return None
    cursor._iresult += 1
    fake = cursor._results[cursor._iresult]
    _show_result(cursor, fake)
    _replayed[cursor] = db.RowBuffer(
        db.recorded_rows(fake.recorded), truncated=bool(fake.recorded.get("truncated")), refuse=buffer.refuse
    )
    return True


def _encoded_params(op: str, params: Any) -> Any:
    if op == "executemany":
        return [db.encode_params(p) for p in params]
    return db.encode_params(params)


class _Support:
    def __init__(self, psycopg: Any) -> None:
        self.psycopg = psycopg
        self.pq = psycopg.pq
        from psycopg.rows import tuple_row

        self.tuple_row = tuple_row
        self.fakes: weakref.WeakSet[Any] = weakref.WeakSet()
        support = self

        class ReplayedConnection(psycopg.Connection):  # type: ignore[misc]
            """A psycopg connection with no server: its statements are answered by the recording."""

            def commit(self) -> None:
                _transaction_replay(self, "commit")

            def rollback(self) -> None:
                _transaction_replay(self, "rollback")

            def close(self) -> None:
                self._closed = True
                self.pgconn.status = support.pq.ConnStatus.BAD

            def _exec_command(self, command: Any, result_format: Any = None) -> Any:
                return None  # BEGIN/COMMIT/SAVEPOINT of a transaction() block: answered by the block's patches
                yield

            def wait(self, gen: Any, interval: Any = None, **options: Any) -> Any:  # psycopg 3.3: timeout=
                return _run_offline(gen)

            def _set_autocommit(self, value: bool) -> None:
                self._autocommit = bool(value)

            def _set_isolation_level(self, value: Any) -> None:
                self._isolation_level = value

            def _set_read_only(self, value: Any) -> None:
                self._read_only = value

            def _set_deferrable(self, value: Any) -> None:
                self._deferrable = value

        class ReplayedAsyncConnection(psycopg.AsyncConnection):  # type: ignore[misc]
            async def commit(self) -> None:
                _transaction_replay(self, "commit")

            async def rollback(self) -> None:
                _transaction_replay(self, "rollback")

            async def close(self) -> None:
                self._closed = True
                self.pgconn.status = support.pq.ConnStatus.BAD

            def _exec_command(self, command: Any, result_format: Any = None) -> Any:
                return None
                yield

            async def wait(self, gen: Any, interval: Any = None, **options: Any) -> Any:
                return _run_offline(gen)

            def _set_autocommit(self, value: bool) -> None:
                self._autocommit = bool(value)

            async def set_autocommit(self, value: bool) -> None:
                self._autocommit = bool(value)

            def _set_isolation_level(self, value: Any) -> None:
                self._isolation_level = value

            async def set_isolation_level(self, value: Any) -> None:
                self._isolation_level = value

            def _set_read_only(self, value: Any) -> None:
                self._read_only = value

            async def set_read_only(self, value: Any) -> None:
                self._read_only = value

            def _set_deferrable(self, value: Any) -> None:
                self._deferrable = value

            async def set_deferrable(self, value: Any) -> None:
                self._deferrable = value

        self.ReplayedConnection = ReplayedConnection
        self.ReplayedAsyncConnection = ReplayedAsyncConnection

    def replayed_connection(self, event: AnyEvent, kwargs: dict[str, Any], asynchronous: bool) -> Any:
        fake_class = self.ReplayedAsyncConnection if asynchronous else self.ReplayedConnection
        pgconn = _ReplayedPGconn(self.pq, event["data"])
        conn = fake_class(pgconn)
        conn._autocommit = bool(kwargs.get("autocommit", False))
        if kwargs.get("row_factory"):
            conn.row_factory = kwargs["row_factory"]
        if kwargs.get("cursor_factory"):
            conn.cursor_factory = kwargs["cursor_factory"]
        context = kwargs.get("context")
        if context is not None:
            from psycopg.adapt import AdaptersMap

            conn._adapters = AdaptersMap(context.adapters)
        self.fakes.add(conn)
        return conn


def _run_offline(gen: Any) -> Any:
    """Run one of psycopg's IO generators on a replayed connection: the ones it runs there need no IO."""
    try:
        gen.send(None)
    except StopIteration as done:
        return done.value
    gen.close()
    raise LiveIOBlocked("psycopg tried to talk to its server during a replay; the recording answers statements only")


def _transaction_replay(conn: Any, op: str) -> None:
    scope = current()
    if scope is not None and scope.session is not None:
        event = db.serve(scope, DRIVER, op, conn=conn)
        _set_transaction_status(conn, event["data"].get("result") or {}, conn.pgconn.pq)


def _set_transaction_status(conn: Any, result: dict[str, Any], pq: Any) -> None:
    """The replayed connection's transaction status as recorded after the call (SQLAlchemy reads it)."""
    status = result.get("transaction_status")
    if status is not None:
        with contextlib.suppress(Exception):
            conn.pgconn.transaction_status = pq.TransactionStatus(status)


# -- the patches ----------------------------------------------------------------------------------------------
def _describe(conn: Any) -> Callable[[], dict[str, Any]]:
    """The connect data of a connection opened before FluxRun was installed (read from the live connection)."""
    return lambda: _connect_data(conn, db.mask_dsn(conn.info.dsn))


def _connect_patch(support: _Support, original: Callable[..., Any], asynchronous: bool) -> Any:
    def record(scope: Scope, cls: Any, conninfo: str, kwargs: dict[str, Any]) -> tuple[CallEntry | None, Any]:
        target = _target(conninfo, kwargs)
        entry = db.start(scope, f"{DRIVER} connect {target}", {"driver": DRIVER, "op": "connect", "target": target})
        return entry, scope_var.set(None)

    def profile(scope: Scope | None, entry: CallEntry | None, conn: Any, conninfo: str, kwargs: dict[str, Any]) -> None:
        try:
            data = _connect_data(conn, _target(conninfo, kwargs))
        except Exception as exc:
            report_internal_error("psycopg capture", exc)
            db.finish(entry)
            return
        if scope is None:
            db.opened(conn, data)
        else:
            db.connected(scope, entry, conn, data)

    def replay(scope: Scope, kwargs: dict[str, Any]) -> Any:
        event = db.serve(scope, DRIVER, "connect")
        conn = support.replayed_connection(event, kwargs, asynchronous)
        db.replayed(conn, event)
        return conn

    if asynchronous:

        async def aconnect(cls: Any, /, conninfo: str = "", **kwargs: Any) -> Any:
            scope = current()
            if scope is None:
                if replaying_here():
                    raise db.connect_refused(DRIVER, _target(conninfo, kwargs))
                conn = await original(cls, conninfo, **kwargs)
                profile(None, None, conn, conninfo, kwargs)
                return conn
            if scope.session is not None:
                return replay(scope, kwargs)
            entry, token = record(scope, cls, conninfo, kwargs)
            try:
                conn = await original(cls, conninfo, **kwargs)
            except BaseException as exc:
                scope_var.reset(token)
                db.fail(entry, exc)
                raise
            scope_var.reset(token)
            profile(scope, entry, conn, conninfo, kwargs)
            return conn

        return classmethod(aconnect)

    def connect(cls: Any, /, conninfo: str = "", **kwargs: Any) -> Any:
        scope = current()
        if scope is None:
            if replaying_here():
                raise db.connect_refused(DRIVER, _target(conninfo, kwargs))
            conn = original(cls, conninfo, **kwargs)
            profile(None, None, conn, conninfo, kwargs)
            return conn
        if scope.session is not None:
            return replay(scope, kwargs)
        entry, token = record(scope, cls, conninfo, kwargs)
        try:
            conn = original(cls, conninfo, **kwargs)
        except BaseException as exc:
            scope_var.reset(token)
            db.fail(entry, exc)
            raise
        scope_var.reset(token)
        profile(scope, entry, conn, conninfo, kwargs)
        return conn

    return classmethod(connect)


def _described(conn: Any) -> dict[str, Any]:
    """`_describe(conn)()`: what `db.begin` calls (`describe_conn`) for a connection it has no profile of."""
    return _connect_data(conn, db.mask_dsn(conn.info.dsn))


_UNSET: Any = object()  # `execute`'s `prepare` when the caller did not pass it


def _execute_patch(support: _Support, original: Callable[..., Any], op: str, asynchronous: bool) -> Any:
    encode = db.encode_params if op == "execute" else lambda params: _encoded_params(op, params)
    # statement text -> (normalised, label): an app repeats its statements (`db.normalise_sql`, `db.label`)
    statements: dict[str, tuple[str, str]] = {}

    def begin(scope: Scope | None, cursor: Any, query: Any, params: Any, caller: Any) -> CallEntry | None:
        known = statements.get(query) if type(query) is str else None
        if known is None:
            sql = db.normalise_sql(query)
            known = (sql, db.label(DRIVER, op, sql))
            if type(query) is str:
                if len(statements) >= _STATEMENTS_CACHED:
                    statements.clear()
                statements[query] = known
        data = {
            "driver": DRIVER,
            "op": op,
            "sql": known[0],
            "params": None if params is None else encode(params),
        }
        entry = db.begin_from(scope, cursor._conn, known[1], data, _described, caller)
        if entry is not None:
            entry.build = _answer_data
        return entry

    def replay(scope: Scope, cursor: Any, query: Any, params: Any) -> Any:
        if cursor.connection not in support.fakes:
            raise db.not_replayable(DRIVER)
        _serve_into(scope, cursor, op, query, _encoded_params(op, params), support.pq, asynchronous)
        return cursor if op == "execute" else None

    as_sequence: Callable[[Any], Any] | None = None
    if op == "executemany":

        def as_sequence(params: Any) -> Any:
            return params if isinstance(params, (list, tuple)) else list(params)

    if asynchronous:

        async def aexecute(
            self: Any, query: Any, params: Any = None, *args: Any, prepare: Any = _UNSET, **kwargs: Any
        ) -> Any:
            scope = current()  # `prepare=` as in `execute` below
            if scope is None and not db.setting_up:
                if args or kwargs:
                    if prepare is not _UNSET:
                        kwargs["prepare"] = prepare
                    return await original(self, query, params, *args, **kwargs)
                if prepare is _UNSET:
                    return await original(self, query, params)
                return await original(self, query, params, prepare=prepare)
            if prepare is not _UNSET:
                kwargs["prepare"] = prepare
            if _replayed_refs:
                _replayed.pop(self, None)
            if as_sequence is not None:
                params = as_sequence(params)
            if scope is not None and scope.session is not None:
                return replay(scope, self, query, params)
            entry = begin(scope, self, query, params, _getframe(1))
            if entry is None:
                return await original(self, query, params, *args, **kwargs)
            token = scope_var.set(None)
            try:
                out = await original(self, query, params, *args, **kwargs)
                result = await _asafe_snapshot(self, support.tuple_row)
                if result is not None and len(self._results) > 1:
                    result = await _asafe_sets(self, result, support.tuple_row)
            except BaseException as exc:
                scope_var.reset(token)
                db.fail(entry, exc)
                raise
            scope_var.reset(token)
            db.finish(entry, result, scope)
            return out

        return aexecute

    def execute(self: Any, query: Any, params: Any = None, *args: Any, prepare: Any = _UNSET, **kwargs: Any) -> Any:
        # `prepare=` (which `Connection.execute` always passes) is a parameter of its own so that the idle path
        # passes it on in an ordinary call: in `**kwargs` it would cost CPython's generic call, twice
        scope = current()
        if scope is None and not db.setting_up:
            if _replayed_refs:
                _replayed.pop(self, None)
            if args or kwargs:
                if prepare is not _UNSET:
                    kwargs["prepare"] = prepare
                return original(self, query, params, *args, **kwargs)
            if prepare is _UNSET:
                return original(self, query, params)
            return original(self, query, params, prepare=prepare)
        if prepare is not _UNSET:
            kwargs["prepare"] = prepare
        if _replayed_refs:
            _replayed.pop(self, None)
        if as_sequence is not None:
            params = as_sequence(params)
        if scope is not None and scope.session is not None:
            return replay(scope, self, query, params)
        entry = begin(scope, self, query, params, _getframe(1))
        if entry is None:
            return original(self, query, params, *args, **kwargs)
        token = scope_var.set(None)
        try:
            out = original(self, query, params, *args, **kwargs)
        except BaseException as exc:
            scope_var.reset(token)
            db.fail(entry, exc)
            raise
        try:  # `db.finish(entry, result, scope)` with `_asafe_snapshot`'s answer, inlined
            if not end_call(entry, scope):
                scope_var.reset(token)
                return out  # the execution had ended: the app never saw this answer
            limit = db.row_limit()
            result = _direct_answer(self, limit)
            entry.value["result"] = _snapshot(self, support.tuple_row, limit) if result is None else result
            if len(self._results) > 1:  # `executemany(returning=True)`, several statements: each result set
                entry.value["result"] = _with_sets(self, entry.value["result"], support.tuple_row, limit)
        except Exception as exc:  # never break the app's statement: record it without its answer
            report_internal_error("psycopg capture", exc)
        scope_var.reset(token)
        return out

    return execute


def _shape(cursor: Any, rows: list[Any]) -> list[Any]:
    make = cursor._make_row
    return rows if make is None else [make(r) for r in rows]


def _one(cursor: Any, buffer: db.RowBuffer) -> Any:
    row = buffer.one()
    return None if row is None or cursor._make_row is None else cursor._make_row(row)


class _ReplayedRows:
    """Mixed in front of a replayed cursor's class (`_serve_into`): its fetches read the recorded rows. Only
    cursors answered at replay get it, so psycopg's own fetches run unpatched everywhere else (an idle
    `fetchone` costs nothing); a cursor executed again live (never, on a replayed connection) reads its own."""

    __slots__ = ()

    def fetchone(self) -> Any:
        buffer = _replayed.get(self)
        return super().fetchone() if buffer is None else _one(self, buffer)  # type: ignore[misc]

    def fetchmany(self, size: int = 0) -> Any:
        buffer = _replayed.get(self)
        if buffer is None:
            return super().fetchmany(size)  # type: ignore[misc]
        return _shape(self, buffer.take(size or self.arraysize))  # type: ignore[attr-defined]

    def fetchall(self) -> Any:
        buffer = _replayed.get(self)
        return super().fetchall() if buffer is None else _shape(self, buffer.take(None))  # type: ignore[misc]

    def nextset(self) -> bool | None:
        buffer = _replayed.get(self)
        return super().nextset() if buffer is None else _next_set(self, buffer)  # type: ignore[misc]

    def __next__(self) -> Any:
        buffer = _replayed.get(self)
        if buffer is None:
            return super().__next__()  # type: ignore[misc]
        row = _one(self, buffer)
        if row is None:
            raise StopIteration
        return row


class _AsyncReplayedRows:
    """`_ReplayedRows` for an `AsyncCursor`."""

    __slots__ = ()

    async def fetchone(self) -> Any:
        buffer = _replayed.get(self)
        return await super().fetchone() if buffer is None else _one(self, buffer)  # type: ignore[misc]

    async def fetchmany(self, size: int = 0) -> Any:
        buffer = _replayed.get(self)
        if buffer is None:
            return await super().fetchmany(size)  # type: ignore[misc]
        return _shape(self, buffer.take(size or self.arraysize))  # type: ignore[attr-defined]

    async def fetchall(self) -> Any:
        buffer = _replayed.get(self)
        return await super().fetchall() if buffer is None else _shape(self, buffer.take(None))  # type: ignore[misc]

    def nextset(self) -> bool | None:
        buffer = _replayed.get(self)
        return super().nextset() if buffer is None else _next_set(self, buffer)  # type: ignore[misc]

    async def __anext__(self) -> Any:
        buffer = _replayed.get(self)
        if buffer is None:
            return await super().__anext__()  # type: ignore[misc]
        row = _one(self, buffer)
        if row is None:
            raise StopAsyncIteration
        return row


def _replayed_class(home: type, asynchronous: bool) -> type:
    """`home` (a cursor class) with the replayed fetches in front (`db.mixed_in`)."""
    return db.mixed_in(_AsyncReplayedRows if asynchronous else _ReplayedRows, home)


# -- server-side (named) cursors ------------------------------------------------------------------------------
# `ServerCursor.execute` declares the cursor (DECLARE, then a describe); each fetch, page of iteration or
# `fetchall` is a FETCH through `_fetch_gen`. The declaration is recorded as one `declare` statement whose rows
# are the ones the app fetched, in order, kept by the cursor's `_fetch_gen` as it runs (a `_ServerTape`, made
# into the answer when the execution is sealed). At replay `execute` is answered from that statement and
# `_fetch_gen` serves the same rows: psycopg's own fetch, iteration and paging logic runs on them unchanged.

# cursors whose fetches are being recorded: cursor -> its tape
_server_tapes: weakref.WeakKeyDictionary[Any, _ServerTape] = weakref.WeakKeyDictionary()


class _ServerTape:
    """The rows a server-side cursor's fetches (or a `stream()`'s results) returned, as tuples, up to the row
    limit, and whether the cursor came to its end."""

    __slots__ = ("answer", "complete", "limit", "more", "rows")

    def __init__(self, answer: dict[str, Any] | None, limit: int) -> None:
        self.answer = answer  # description, rowcount, status and transaction status (`_cursor_answer`)
        self.limit = limit
        self.rows: list[tuple[Any, ...]] = []
        self.more = False  # rows fetched past the limit
        self.complete = False

    def took(self, cursor: Any) -> int:
        """Keep the rows of the cursor's current result (the one a FETCH or a stream step just read)."""
        result = cursor.pgresult
        count = int(result.ntuples)
        room = self.limit - len(self.rows)
        if count > room:
            self.more = True
        if room > 0 and count:
            self.rows.extend(cursor._tx.load_rows(0, min(count, room), tuple))
        return count

    def recorded(self) -> dict[str, Any]:
        answer = self.answer or {"description": None, "rowcount": -1, "status": None, "transaction_status": None}
        return db.rows_result(
            list(self.rows),
            limit=self.limit,
            more=self.more,
            description=answer["description"],
            rowcount=answer["rowcount"],
            status=answer["status"],
            transaction_status=answer["transaction_status"],
            complete=self.complete,
        )


def _cursor_answer(cursor: Any) -> dict[str, Any]:
    """A cursor's description (names, type OIDs, modifiers, sizes), counts and status, as recorded."""
    result = cursor.pgresult
    columns = cursor.description
    description = None
    if columns is not None and result is not None:
        description = [[c.name, c.type_code, result.fmod(i), result.fsize(i)] for i, c in enumerate(columns)]
    return {
        "description": description,
        "rowcount": cursor.rowcount,
        "status": cursor.statusmessage,
        "transaction_status": int(cursor.connection.info.transaction_status),
    }


def _server_answer_data(data: dict[str, Any]) -> dict[str, Any]:
    """A `declare` statement's `build`: its tape made into the answer, with the rows fetched by now."""
    tape = data.get("result")
    if isinstance(tape, _ServerTape):
        try:
            data = {**data, "result": tape.recorded()}
        except Exception as exc:
            report_internal_error("psycopg capture", exc)
            data = {**data, "result": None}
    return data


class _TeedServerRows:
    """Put in front of a recorded server-side cursor's class: every FETCH's rows go to its tape as well."""

    __slots__ = ()

    def _fetch_gen(self, num: int | None) -> Any:
        rows = yield from super()._fetch_gen(num)  # type: ignore[misc]
        tape = _server_tapes.get(self)
        if tape is not None:
            try:
                tape.complete = tape.took(self) < num if num is not None else True
            except Exception as exc:
                report_internal_error("psycopg capture", exc)
        return rows


class _ReplayedServerRows:
    """Put in front of a replayed server-side cursor's class: a FETCH takes the next recorded rows, shaped by
    the cursor's row factory; closing it sends nothing (the replayed connection's commands go nowhere)."""

    __slots__ = ()

    def _fetch_gen(self, num: int | None) -> Any:
        buffer = _replayed.get(self)
        if buffer is None:
            return (yield from super()._fetch_gen(num))  # type: ignore[misc]
        if self.closed:  # type: ignore[attr-defined]
            from psycopg import InterfaceError

            raise InterfaceError("the cursor is closed")
        return _shape(self, buffer.take(num))


def _refuse_unread(scope: Scope, event: AnyEvent) -> BaseException:
    """The error for reading past the rows the app read from a server-side cursor or a stream at capture."""
    result = event["data"].get("result") or {}
    if result.get("truncated"):
        return db.refuse_truncated(scope, event)
    here = scope.here()
    assert here.session is not None
    count = len(result.get("rows") or [])
    what = "stream" if event["data"].get("op") == "stream" else "server-side cursor"
    return here.session.refuse(
        db.KIND,
        str(event.get("call")),
        here.path,
        db.app_frame(),
        f"the recording holds the {count} rows the app fetched from this {what} at capture, and the code now "
        f"fetches past them (a {what} is recorded as far as the app read it)",
    )


def _server_execute_patch(support: _Support, original: Callable[..., Any], asynchronous: bool) -> Any:
    """`ServerCursor.execute` (or the async one's): recorded as a `declare` statement whose rows are the ones the
    app goes on to fetch; answered at replay with those rows."""

    def begin(scope: Scope | None, cursor: Any, query: Any, params: Any) -> CallEntry | None:
        sql = db.normalise_sql(query)
        data = {"driver": DRIVER, "op": "declare", "sql": sql, "params": db.encode_params(params)}
        entry = db.begin_from(scope, cursor._conn, db.label(DRIVER, "declare", sql), data, _described, _getframe(2))
        if entry is not None:
            entry.build = _server_answer_data
        return entry

    def recorded(cursor: Any, entry: CallEntry) -> None:
        try:
            tape = _ServerTape(_cursor_answer(cursor), db.row_limit())
            db.finish(entry, None)
            entry.value["result"] = tape
            if not isinstance(cursor, _TeedServerRows):
                cursor.__class__ = db.mixed_in(_TeedServerRows, cursor.__class__)
            _server_tapes[cursor] = tape
        except Exception as exc:
            report_internal_error("psycopg capture", exc)

    def replay(scope: Scope, cursor: Any, query: Any, params: Any) -> Any:
        if cursor.connection not in support.fakes:
            raise db.not_replayable(DRIVER)
        event = db.serve(scope, DRIVER, "declare", db.normalise_sql(query), db.encode_params(params), conn=cursor._conn)
        result = _load_answer(cursor, event, support.pq)
        cursor._described = True
        cursor._iter_rows = None
        if not isinstance(cursor, _ReplayedServerRows):
            cursor.__class__ = db.mixed_in(_ReplayedServerRows, cursor.__class__)
        _replayed[cursor] = db.RowBuffer(
            db.recorded_rows(result),
            truncated=bool(result.get("truncated")) or not result.get("complete"),
            refuse=lambda: _refuse_unread(scope, event),
        )
        return cursor

    if asynchronous:

        async def aexecute(self: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
            scope = current()
            if scope is None and not db.setting_up:
                return await original(self, query, params, **kwargs)
            if scope is not None and scope.session is not None:
                return replay(scope, self, query, params)
            entry = begin(scope, self, query, params)
            if entry is None:
                return await original(self, query, params, **kwargs)
            token = scope_var.set(None)
            try:
                out = await original(self, query, params, **kwargs)
            except BaseException as exc:
                scope_var.reset(token)
                db.fail(entry, exc)
                raise
            scope_var.reset(token)
            recorded(self, entry)
            return out

        return aexecute

    def execute(self: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
        scope = current()
        if scope is None and not db.setting_up:
            return original(self, query, params, **kwargs)
        if scope is not None and scope.session is not None:
            return replay(scope, self, query, params)
        entry = begin(scope, self, query, params)
        if entry is None:
            return original(self, query, params, **kwargs)
        token = scope_var.set(None)
        try:
            out = original(self, query, params, **kwargs)
        except BaseException as exc:
            scope_var.reset(token)
            db.fail(entry, exc)
            raise
        scope_var.reset(token)
        recorded(self, entry)
        return out

    return execute


# -- stream() ----------------------------------------------------------------------------------------------------
# `Cursor.stream()` sends the query and reads its rows one by one (or in chunks) as the app iterates, each result
# through `_stream_fetchone_gen`. It is recorded as one `stream` statement, begun when the app first asks for a
# row, with the rows read (teed from `_stream_fetchone_gen`, as for a server-side cursor) and, if one came, the
# error after them. At replay the recorded rows are yielded, shaped by the cursor's row factory, then the error.


class _TeedStream:
    """Put in front of a cursor's class while its `stream()` is recorded: each result read goes to the tape."""

    __slots__ = ()

    def _stream_fetchone_gen(self, first: bool) -> Any:
        result = yield from super()._stream_fetchone_gen(first)  # type: ignore[misc]
        tape = _server_tapes.get(self)
        if tape is not None and result is not None:
            try:
                if tape.answer is None:
                    tape.answer = _cursor_answer(self)
                tape.took(self)
            except Exception as exc:
                report_internal_error("psycopg capture", exc)
        return result


def _stream_patch(support: _Support, original: Callable[..., Any], asynchronous: bool) -> Any:
    """`Cursor.stream` (or the async one's): recorded as a `stream` statement with the rows read; answered at
    replay with those rows, then the recorded error if one came after them."""

    def begin(scope: Scope, cursor: Any, query: Any, params: Any, caller: Any) -> CallEntry | None:
        sql = db.normalise_sql(query)
        data = {"driver": DRIVER, "op": "stream", "sql": sql, "params": db.encode_params(params)}
        entry = db.begin_from(scope, cursor._conn, db.label(DRIVER, "stream", sql), data, _described, caller)
        if entry is None:
            return None
        try:
            entry.build = _server_answer_data
            tape = _ServerTape(None, db.row_limit())
            db.finish(entry, None)
            entry.value["result"] = tape
            if not isinstance(cursor, _TeedStream):
                cursor.__class__ = db.mixed_in(_TeedStream, cursor.__class__)
            _server_tapes[cursor] = tape
        except Exception as exc:
            report_internal_error("psycopg capture", exc)
        return entry

    def ended(cursor: Any, entry: CallEntry, error: BaseException | None) -> None:
        tape = _server_tapes.pop(cursor, None)
        if tape is None:
            return
        if error is None:
            try:
                tape.answer = _cursor_answer(cursor) if tape.answer is None else tape.answer
                tape.complete = True
            except Exception as exc:
                report_internal_error("psycopg capture", exc)
        elif isinstance(error, Exception):  # not GeneratorExit: the app stopped reading, and no error came
            db.fail(entry, error)

    def served(scope: Scope, cursor: Any, query: Any, params: Any) -> tuple[AnyEvent, list[Any]]:
        if cursor.connection not in support.fakes:
            raise db.not_replayable(DRIVER)
        sql, encoded = db.normalise_sql(query), db.encode_params(params)
        event = db.serve(scope, DRIVER, "stream", sql, encoded, conn=cursor._conn, raise_error=False)
        result = _load_answer(cursor, event, support.pq)
        make = cursor._make_row
        rows = db.recorded_rows(result)
        return event, rows if make is None else [make(row) for row in rows]

    def past_rows(scope: Scope, event: AnyEvent) -> None:
        """The code asks for a row after the recorded ones: the recorded error, or a refusal if the app had not
        read the stream to its end at capture (nothing when it had: the stream ends)."""
        raise_recorded_error(event)
        result = event["data"].get("result") or {}
        if result.get("truncated") or not result.get("complete"):
            raise _refuse_unread(scope, event)

    if asynchronous:

        async def arecorded(cursor: Any, query: Any, params: Any, options: dict[str, Any]) -> Any:
            scope = current()
            if scope is not None and scope.session is not None:
                event, shaped = served(scope, cursor, query, params)
                for row in shaped:
                    yield row
                past_rows(scope, event)
                return
            rows = original(cursor, query, params, **options)
            entry = begin(scope, cursor, query, params, _getframe(1)) if scope is not None else None
            if entry is None:
                async for row in rows:
                    yield row
                return
            try:
                async for row in rows:
                    yield row
            except BaseException as exc:
                ended(cursor, entry, exc)
                raise
            finally:
                await rows.aclose()
            ended(cursor, entry, None)

        def astream(self: Any, query: Any, params: Any = None, **options: Any) -> Any:
            if current() is None and not db.setting_up:
                return original(self, query, params, **options)
            return arecorded(self, query, params, options)

        return astream

    def recorded(cursor: Any, query: Any, params: Any, options: dict[str, Any]) -> Any:
        scope = current()
        if scope is not None and scope.session is not None:
            event, shaped = served(scope, cursor, query, params)
            yield from shaped
            past_rows(scope, event)
            return
        rows = original(cursor, query, params, **options)
        entry = begin(scope, cursor, query, params, _getframe(1)) if scope is not None else None
        if entry is None:
            yield from rows
            return
        try:
            yield from rows
        except BaseException as exc:
            ended(cursor, entry, exc)
            raise
        ended(cursor, entry, None)

    def stream(self: Any, query: Any, params: Any = None, **options: Any) -> Any:
        if current() is None and not db.setting_up:
            return original(self, query, params, **options)
        return recorded(self, query, params, options)

    return stream


def _status_after(conn: Any) -> dict[str, Any] | None:
    try:
        return {"transaction_status": int(conn.info.transaction_status)}
    except Exception:
        return None


def _transaction_patch(original: Callable[..., Any], op: str, asynchronous: bool) -> Any:
    def begin(scope: Scope | None, conn: Any) -> CallEntry | None:
        return db.begin(scope, conn, db.label(DRIVER, op), {"driver": DRIVER, "op": op}, _describe(conn))

    if asynchronous:

        async def acall(self: Any) -> None:
            scope = current()
            if scope is None and not db.setting_up:
                return await original(self)  # type: ignore[no-any-return]
            if scope is not None and scope.session is not None:
                db.serve(scope, DRIVER, op, conn=self)
                return None
            entry = begin(scope, self)
            if entry is None:
                return await original(self)  # type: ignore[no-any-return]
            token = scope_var.set(None)
            try:
                await original(self)
            except BaseException as exc:
                scope_var.reset(token)
                db.fail(entry, exc)
                raise
            scope_var.reset(token)
            db.finish(entry, _status_after(self))
            return None

        return acall

    def call(self: Any) -> None:
        scope = current()
        if scope is None and not db.setting_up:
            return original(self)  # type: ignore[no-any-return]
        if scope is not None and scope.session is not None:
            db.serve(scope, DRIVER, op, conn=self)
            return None
        entry = begin(scope, self)
        if entry is None:
            return original(self)  # type: ignore[no-any-return]
        token = scope_var.set(None)
        try:
            original(self)
        except BaseException as exc:
            scope_var.reset(token)
            db.fail(entry, exc)
            raise
        scope_var.reset(token)
        db.finish(entry, _status_after(self))
        return None

    return call


def _block_op(tx: Any, exc_val: BaseException | None) -> str:
    """What leaving a `transaction()` block does: commit, unless it failed or forces a rollback."""
    return "commit" if not exc_val and not tx.force_rollback else "rollback"


def _replay_enter(tx: Any) -> Any:
    """Entering a `transaction()` block on a replayed connection: its bookkeeping, no command (psycopg's own
    would quote the savepoint name with libpq, which a replayed connection does not have)."""
    tx._check_enter()
    tx.status = tx.Status.ACTIVE
    tx._push_savepoint()
    return tx


def _replay_exit(tx: Any, exc_val: BaseException | None) -> bool:
    """Leaving it: as psycopg's `_exit_gen` decides, a `Rollback` aimed at this block swallowed."""
    from psycopg import Rollback

    if _block_op(tx, exc_val) == "commit":
        problem = tx._pop_savepoint("commit")
        tx.status = tx.Status.COMMITTED
    else:
        problem = tx._pop_savepoint("rollback")
        explicit = isinstance(exc_val, Rollback) or tx.force_rollback
        tx.status = tx.Status.ROLLED_BACK_EXPLICITLY if explicit else tx.Status.ROLLED_BACK_WITH_ERROR
    if problem:
        raise problem
    return isinstance(exc_val, Rollback) and (not exc_val.transaction or exc_val.transaction is tx)


def _block_patches(support: _Support, cls: Any, asynchronous: bool) -> list[Patch]:
    """`with conn.transaction():` sends BEGIN (or SAVEPOINT) on entry and COMMIT or ROLLBACK (or RELEASE /
    ROLLBACK TO) on exit: recorded as `begin` and `commit`/`rollback` calls with their savepoint name. At
    replay the block's bookkeeping runs on the replayed connection, whose commands go nowhere."""
    enter_name, exit_name = ("__aenter__", "__aexit__") if asynchronous else ("__enter__", "__exit__")
    enter_original, exit_original = vars(cls)[enter_name], vars(cls)[exit_name]
    pq = support.pq

    def start_call(scope: Scope | None, tx: Any, op: str) -> CallEntry | None:
        conn = tx._conn
        data = {"driver": DRIVER, "op": op, "savepoint": tx.savepoint_name or None}
        return db.begin(scope, conn, db.label(DRIVER, op), data, _describe(conn))

    def served(scope: Scope, tx: Any, op: str) -> AnyEvent:
        if tx._conn not in support.fakes:
            raise db.not_replayable(DRIVER)
        return db.serve(scope, DRIVER, op, conn=tx._conn)

    def ended(tx: Any, entry: CallEntry | None, event: AnyEvent | None) -> None:
        if event is not None:
            _set_transaction_status(tx._conn, event["data"].get("result") or {}, pq)
            return
        if entry is not None:
            entry.value["savepoint"] = tx.savepoint_name or None  # named on entry for a nested block
        db.finish(entry, _status_after(tx._conn))

    if asynchronous:

        async def aenter(self: Any) -> Any:
            scope = current()
            if scope is None and not db.setting_up:
                return await enter_original(self)
            if scope is not None and scope.session is not None:
                event = served(scope, self, "begin")
                out = _replay_enter(self)
                ended(self, None, event)
                return out
            entry = start_call(scope, self, "begin")
            if entry is None:
                return await enter_original(self)
            token = scope_var.set(None)
            try:
                out = await enter_original(self)
            except BaseException as exc:
                scope_var.reset(token)
                db.fail(entry, exc)
                raise
            scope_var.reset(token)
            ended(self, entry, None)
            return out

        async def aexit(self: Any, exc_type: Any, exc_val: Any, exc_tb: Any) -> Any:
            scope = current()
            if scope is None and not db.setting_up:
                return await exit_original(self, exc_type, exc_val, exc_tb)
            op = _block_op(self, exc_val)
            if scope is not None and scope.session is not None:
                event = served(scope, self, op)
                swallowed = _replay_exit(self, exc_val)
                ended(self, None, event)
                return swallowed
            entry = start_call(scope, self, op)
            if entry is None:
                return await exit_original(self, exc_type, exc_val, exc_tb)
            token = scope_var.set(None)
            try:
                out = await exit_original(self, exc_type, exc_val, exc_tb)
            except BaseException as exc:
                scope_var.reset(token)
                db.fail(entry, exc)
                raise
            scope_var.reset(token)
            ended(self, entry, None)
            return out

        return [Patch(cls, enter_name, aenter), Patch(cls, exit_name, aexit)]

    def enter(self: Any) -> Any:
        scope = current()
        if scope is None and not db.setting_up:
            return enter_original(self)
        if scope is not None and scope.session is not None:
            event = served(scope, self, "begin")
            out = _replay_enter(self)
            ended(self, None, event)
            return out
        entry = start_call(scope, self, "begin")
        if entry is None:
            return enter_original(self)
        token = scope_var.set(None)
        try:
            out = enter_original(self)
        except BaseException as exc:
            scope_var.reset(token)
            db.fail(entry, exc)
            raise
        scope_var.reset(token)
        ended(self, entry, None)
        return out

    def exit_(self: Any, exc_type: Any, exc_val: Any, exc_tb: Any) -> Any:
        scope = current()
        if scope is None and not db.setting_up:
            return exit_original(self, exc_type, exc_val, exc_tb)
        op = _block_op(self, exc_val)
        if scope is not None and scope.session is not None:
            event = served(scope, self, op)
            swallowed = _replay_exit(self, exc_val)
            ended(self, None, event)
            return swallowed
        entry = start_call(scope, self, op)
        if entry is None:
            return exit_original(self, exc_type, exc_val, exc_tb)
        token = scope_var.set(None)
        try:
            out = exit_original(self, exc_type, exc_val, exc_tb)
        except BaseException as exc:
            scope_var.reset(token)
            db.fail(entry, exc)
            raise
        scope_var.reset(token)
        ended(self, entry, None)
        return out

    return [Patch(cls, enter_name, enter), Patch(cls, exit_name, exit_)]


class PsycopgInterceptor:
    kind = db.KIND

    def __init__(self) -> None:
        self.psycopg = loaded("psycopg")

    def patches(self) -> list[Patch]:
        psycopg = self.psycopg
        if psycopg is None:
            return []
        try:
            support = _Support(psycopg)
        except Exception:  # a psycopg without the parts this relies on: leave it alone
            return []
        patches: list[Patch] = []
        for conn_cls, cur_cls, asynchronous in (
            (psycopg.Connection, psycopg.Cursor, False),
            (psycopg.AsyncConnection, psycopg.AsyncCursor, True),
        ):
            connect = _connect_patch(support, vars(conn_cls)["connect"].__func__, asynchronous)
            patches.append(Patch(conn_cls, "connect", connect))
            if not asynchronous:  # `psycopg.connect` is `Connection.connect`, bound when psycopg was imported
                patches.append(Patch(psycopg, "connect", connect.__get__(None, conn_cls)))
            for op in ("commit", "rollback"):
                patches.append(Patch(conn_cls, op, _transaction_patch(vars(conn_cls)[op], op, asynchronous)))
            for op in ("execute", "executemany"):
                patches.append(Patch(cur_cls, op, _execute_patch(support, vars(cur_cls)[op], op, asynchronous)))
            stream = _stream_patch(support, vars(cur_cls)["stream"], asynchronous)
            patches.append(Patch(cur_cls, "stream", stream))
        for server_cls, asynchronous in ((psycopg.ServerCursor, False), (psycopg.AsyncServerCursor, True)):
            execute = _server_execute_patch(support, vars(server_cls)["execute"], asynchronous)
            patches.append(Patch(server_cls, "execute", execute))
        for owner, op, what in (
            (psycopg.Cursor, "copy", "COPY"),
            (psycopg.AsyncCursor, "copy", "COPY"),
            (psycopg.Connection, "pipeline", "pipeline mode"),
            (psycopg.AsyncConnection, "pipeline", "pipeline mode"),
            (psycopg.Connection, "notifies", "notifications"),
            (psycopg.AsyncConnection, "notifies", "notifications"),
        ):
            if op in vars(owner):
                why = f"psycopg's {what} goes around the statements FluxRun records"
                patches.append(Patch(owner, op, unrecorded_method(vars(owner)[op], f"psycopg {what}", DRIVER, why)))
        patches.extend(_block_patches(support, psycopg.Transaction, False))
        patches.extend(_block_patches(support, psycopg.AsyncTransaction, True))
        return patches

    def rebind(self) -> dict[int, Any]:
        return {}
