"""psycopg2, recorded at capture and answered at replay: statements with what they returned, commits, rollbacks.

psycopg2's `connection` and `cursor` are C types whose methods cannot be patched, so `psycopg2.connect` opens the
connection with a `connection_factory` of FluxRun's: `Connection`, a subclass of psycopg2's own, whose cursors
are `Cursor`, a subclass of psycopg2's cursor (an app's `cursor_factory`, `RealDictCursor`, `DictCursor`,
`NamedTupleCursor` or its own, gets FluxRun's cursor under its own methods, as sqlite3's factories do). Only
the statements (`execute`, `executemany`, `callproc`), `commit`, `rollback` and `cursor` are overridden; `with
conn:` reaches them (psycopg2's `__exit__` calls the methods by name). Outside a capture a statement costs one
context-variable read; fetching stays C.

Inside a capture a statement runs on the real cursor; its rows (up to the row limit) are then read as tuples
(the cursor's row factory set aside) and the cursor scrolled back to its first row, so the app reads the live
result exactly as it would have. At replay `connect` builds a psycopg2 connection object that never connected
(no socket, no DNS: psycopg2's own object, so `register_type` and `mogrify` take it) carrying the recorded
server version and parameters; its cursors answer every statement from the recording: `description` (psycopg2
`Column`s), `rowcount`, `statusmessage`, `lastrowid`, and fetches and iteration over the recorded rows, through
the cursor's row factory. A recorded psycopg2 error is raised again as its class with its `pgcode` and
`pgerror` (its `diag` is empty: libpq's result is not recorded). Connections are profiled when they open
(db_common: setup profiles), so a warm SQLAlchemy pool or Django persistent connection replays in a fresh
process. Not recorded (noted at capture, refused by name at replay): COPY (`copy_from`, `copy_to`,
`copy_expert`), named (server-side) cursors, `LISTEN` and `poll()` (notifications), large objects (`lobject`).
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable
from sys import _getframe
from types import FrameType
from typing import Any

from fluxrun._context import Scope, current, scope_var
from fluxrun._internal import report_internal_error
from fluxrun._replay_mode import replaying_here
from fluxrun.errors import LiveIOBlocked
from fluxrun.interceptors import db_common as db
from fluxrun.interceptors.base import Patch, loaded, raise_recorded_error
from fluxrun.interceptors.db_common import setting_up as _setting_up
from fluxrun.interceptors.unrecorded import refuse_or_note
from fluxrun.model.recording import CallEntry
from fluxrun.model.schema import AnyEvent
from fluxrun.model.values import decode

__all__ = ["Psycopg2Interceptor"]

DRIVER = "psycopg2"
_COPY = "COPY moves rows outside the statements FluxRun records"
_NAMED = "a named (server-side) cursor fetches its rows from the server as the app reads them"
_NOTIFY = "notifications arrive outside the statements FluxRun records"
_ASYNC = "its statements' results arrive through poll(), outside the calls FluxRun records"
_LOBJECT = "a large object is read and written outside the statements FluxRun records"
_IDLE, _INERROR = 0, 3  # psycopg2.extensions.TRANSACTION_STATUS_*
_BYTEA = 17  # the type OID psycopg2 reads as memoryview


def _target(dsn: Any, kwargs: dict[str, Any]) -> str:
    return db.connect_target(dsn, kwargs, ("async", "async_"))


def _connect_data(conn: Any, target: str) -> dict[str, Any]:
    parameters = {}
    for name in db.PG_PARAMETERS:
        with contextlib.suppress(Exception):
            value = conn.get_parameter_status(name)
            if value is not None:
                parameters[name] = value
    info = conn.info
    return {
        "driver": DRIVER,
        "op": "connect",
        "target": target,
        "server_version": conn.server_version,
        "protocol_version": conn.protocol_version,
        "encoding": conn.encoding,
        "parameters": parameters,
        "host": info.host,
        "port": info.port,
        "db": info.dbname,
        "user": info.user,
    }


def _described(conn: Any) -> dict[str, Any]:
    """The connect data of a connection FluxRun has no profile of (read from the live connection)."""
    return _connect_data(conn, db.mask_dsn(conn.dsn))


def _is_listen(sql_text: str) -> bool:
    return sql_text[:7].upper().startswith("LISTEN ")


class _Driver:
    """psycopg2's classes with FluxRun's under them, made once psycopg2 is imported."""

    def __init__(self, psycopg2: Any) -> None:
        ext = psycopg2.extensions
        self.psycopg2 = psycopg2
        self.ext = ext
        self.error = psycopg2.Error
        base_conn, base_cur = ext.connection, ext.cursor
        self.new_connection = base_conn.__new__
        conn_cursor = base_conn.cursor
        commit, rollback, lobject = base_conn.commit, base_conn.rollback, base_conn.lobject
        execute, executemany, callproc = base_cur.execute, base_cur.executemany, base_cur.callproc
        copy_from, copy_to, copy_expert = base_cur.copy_from, base_cur.copy_to, base_cur.copy_expert
        calls: dict[str, Callable[..., Any]] = {"execute": execute, "executemany": executemany, "callproc": callproc}
        self.calls = calls
        self.fetchmany = base_cur.fetchmany
        self.scroll = base_cur.scroll
        driver = self

        class Cursor(base_cur):  # type: ignore[misc,valid-type]
            """psycopg2's cursor; its statements look at the context, everything else is psycopg2's own."""

            __slots__ = ()

            def execute(self, query: Any, vars: Any = None) -> Any:
                scope = current()
                if scope is None:
                    if not _setting_up:
                        return execute(self, query, vars)
                    return driver.run(self, None, "execute", query, vars, _getframe(1))
                return driver.run(self, scope, "execute", query, vars, _getframe(1))

            def executemany(self, query: Any, vars_list: Any) -> Any:
                scope = current()
                if scope is None:
                    if not _setting_up:
                        return executemany(self, query, vars_list)
                    return driver.run(self, None, "executemany", query, vars_list, _getframe(1))
                return driver.run(self, scope, "executemany", query, vars_list, _getframe(1))

            def callproc(self, procname: Any, parameters: Any = None) -> Any:
                scope = current()
                if scope is None and not _setting_up:
                    return callproc(self, procname, parameters)
                return driver.run(self, scope, "callproc", procname, parameters, _getframe(1))

            def copy_from(self, file: Any, table: Any, *args: Any, **kwargs: Any) -> Any:
                refuse_or_note("psycopg2 copy_from", str(table), _COPY)
                return copy_from(self, file, table, *args, **kwargs)

            def copy_to(self, file: Any, table: Any, *args: Any, **kwargs: Any) -> Any:
                refuse_or_note("psycopg2 copy_to", str(table), _COPY)
                return copy_to(self, file, table, *args, **kwargs)

            def copy_expert(self, sql: Any, file: Any, *args: Any, **kwargs: Any) -> Any:
                refuse_or_note("psycopg2 copy_expert", db.label("", "", db.normalise_sql(sql)).strip(), _COPY)
                return copy_expert(self, sql, file, *args, **kwargs)

        class ReplayedCursor(Cursor):
            """A cursor of a connection built at replay: every statement answered, its rows the recorded ones."""

            __slots__ = ("_fluxrun_buffer", "_fluxrun_result")

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                self._fluxrun_buffer: db.RowBuffer | None = None
                self._fluxrun_result: tuple[Any, int, Any, Any] = (None, -1, None, None)

            def execute(self, query: Any, vars: Any = None) -> Any:
                driver.serve(self, "execute", query, vars)

            def executemany(self, query: Any, vars_list: Any) -> Any:
                driver.serve(self, "executemany", query, vars_list)

            def callproc(self, procname: Any, parameters: Any = None) -> Any:
                driver.serve(self, "callproc", procname, parameters)
                return parameters

            def _fluxrun_rows(self) -> db.RowBuffer:
                buffer = self._fluxrun_buffer
                if buffer is None:
                    raise psycopg2.ProgrammingError("no results to fetch")
                return buffer

            def _fluxrun_shape(self, row: Any) -> Any:
                """A row as psycopg2 builds it: a tuple, or the row factory's object filled column by column."""
                make = self.row_factory
                if make is None or row is None:
                    return row
                shaped = make(self)
                for index, value in enumerate(row):
                    shaped[index] = value
                return shaped

            def fetchone(self) -> Any:
                return ReplayedCursor._fluxrun_shape(self, ReplayedCursor._fluxrun_rows(self).one())

            def fetchmany(self, size: int | None = None) -> list[Any]:
                rows = ReplayedCursor._fluxrun_rows(self).take(self.arraysize if size is None else size)
                return [ReplayedCursor._fluxrun_shape(self, row) for row in rows]

            def fetchall(self) -> list[Any]:
                rows = ReplayedCursor._fluxrun_rows(self).take(None)
                return [ReplayedCursor._fluxrun_shape(self, row) for row in rows]

            def __iter__(self) -> Any:
                return self

            def __next__(self) -> Any:
                row = ReplayedCursor.fetchone(self)
                if row is None:
                    raise StopIteration
                return row

            def scroll(self, value: int, mode: str = "relative") -> None:
                buffer = ReplayedCursor._fluxrun_rows(self)
                position = value if mode == "absolute" else buffer.position + value
                if position < 0 or position > len(buffer.rows):
                    raise psycopg2.ProgrammingError("scroll destination out of bounds")
                buffer.position = position

            @property
            def description(self) -> Any:
                return self._fluxrun_result[0]

            @property
            def rowcount(self) -> int:
                return self._fluxrun_result[1]

            @property
            def statusmessage(self) -> Any:
                return self._fluxrun_result[2]

            @property
            def lastrowid(self) -> Any:
                return self._fluxrun_result[3]

            @property
            def rownumber(self) -> int:
                buffer = self._fluxrun_buffer
                return 0 if buffer is None else buffer.position

        class Connection(base_conn):  # type: ignore[misc,valid-type]
            """psycopg2's connection; its cursors, commits and rollbacks look at the context."""

            _fluxrun_cursor: type = Cursor

            def cursor(
                self, name: Any = None, cursor_factory: Any = None, withhold: bool = False, scrollable: Any = None
            ) -> Any:
                factory = cursor_factory if cursor_factory is not None else self.cursor_factory
                if name is not None:
                    refuse_or_note("psycopg2 named cursor", str(name), _NAMED)
                    return conn_cursor(self, name, factory, withhold, scrollable)
                if factory is None:  # the usual case: psycopg2's own cursor, FluxRun's under it
                    return conn_cursor(self, None, self._fluxrun_cursor, withhold, scrollable)
                return conn_cursor(self, None, driver.cursor_class(factory, self._fluxrun_cursor), withhold, scrollable)

            def commit(self) -> None:
                scope = current()
                if scope is None and not _setting_up:
                    commit(self)
                else:
                    driver.transaction(self, scope, "commit", commit)

            def rollback(self) -> None:
                scope = current()
                if scope is None and not _setting_up:
                    rollback(self)
                else:
                    driver.transaction(self, scope, "rollback", rollback)

            def lobject(self, *args: Any, **kwargs: Any) -> Any:
                refuse_or_note("psycopg2 lobject", "a large object", _LOBJECT)
                return lobject(self, *args, **kwargs)

            def poll(self) -> Any:
                refuse_or_note("psycopg2 poll", "notifications", _NOTIFY)
                return base_conn.poll(self)

        class ReplayedConnection(Connection):
            """What `connect` returns during a replay: psycopg2's connection object, never connected (its C
            `__init__`, which connects, is not called); what the app asks of it is answered from the recording."""

            _fluxrun_cursor = ReplayedCursor
            _fluxrun_connect: dict[str, Any]
            _fluxrun_status = _IDLE
            _fluxrun_closed = 0
            _fluxrun_autocommit = False
            _fluxrun_isolation: Any = None
            _fluxrun_readonly: Any = None
            _fluxrun_deferrable: Any = None

            def cursor(
                self, name: Any = None, cursor_factory: Any = None, withhold: bool = False, scrollable: Any = None
            ) -> Any:
                if name is not None:
                    refuse_or_note("psycopg2 named cursor", str(name), _NAMED)
                factory = cursor_factory if cursor_factory is not None else self.cursor_factory
                if self._fluxrun_closed:
                    raise psycopg2.InterfaceError("connection already closed")
                return driver.cursor_class(factory, ReplayedCursor)(self)

            def commit(self) -> None:
                driver.transaction(self, current(), "commit", commit)

            def rollback(self) -> None:
                driver.transaction(self, current(), "rollback", rollback)

            def close(self) -> None:
                self._fluxrun_closed = 1

            def cancel(self) -> None:
                pass

            def reset(self) -> None:  # psycopg2's sends ABORT and RESET ALL: no server here, nothing to reset
                self._fluxrun_status = _IDLE

            def poll(self) -> Any:
                raise LiveIOBlocked(f"replay blocked a psycopg2 poll call: {_NOTIFY}, so it is not recorded")

            @property
            def closed(self) -> int:
                return self._fluxrun_closed

            @property
            def status(self) -> int:
                return 1 if self._fluxrun_status == _IDLE else 2  # STATUS_READY, STATUS_BEGIN

            def get_transaction_status(self) -> int:
                return self._fluxrun_status

            @property
            def autocommit(self) -> bool:
                return self._fluxrun_autocommit

            @autocommit.setter
            def autocommit(self, value: bool) -> None:
                self._fluxrun_autocommit = bool(value)

            @property
            def isolation_level(self) -> Any:
                return self._fluxrun_isolation

            @isolation_level.setter
            def isolation_level(self, value: Any) -> None:
                self._fluxrun_isolation = value

            @property
            def readonly(self) -> Any:
                return self._fluxrun_readonly

            @readonly.setter
            def readonly(self, value: Any) -> None:
                self._fluxrun_readonly = value

            @property
            def deferrable(self) -> Any:
                return self._fluxrun_deferrable

            @deferrable.setter
            def deferrable(self, value: Any) -> None:
                self._fluxrun_deferrable = value

            def set_session(
                self, isolation_level: Any = None, readonly: Any = None, deferrable: Any = None, autocommit: Any = None
            ) -> None:
                if isolation_level is not None:
                    self._fluxrun_isolation = isolation_level
                if readonly is not None:
                    self._fluxrun_readonly = readonly
                if deferrable is not None:
                    self._fluxrun_deferrable = deferrable
                if autocommit is not None:
                    self._fluxrun_autocommit = bool(autocommit)

            def set_isolation_level(self, level: Any) -> None:
                if level == 0:  # ISOLATION_LEVEL_AUTOCOMMIT
                    self._fluxrun_autocommit = True
                else:
                    self._fluxrun_autocommit = False
                    self._fluxrun_isolation = level

            def set_client_encoding(self, encoding: str) -> None:
                self._fluxrun_connect = {**self._fluxrun_connect, "encoding": encoding}

            @property
            def server_version(self) -> int:
                return int(self._fluxrun_connect.get("server_version") or 0)

            @property
            def protocol_version(self) -> int:
                return int(self._fluxrun_connect.get("protocol_version") or 3)

            @property
            def encoding(self) -> str:
                return str(self._fluxrun_connect.get("encoding") or "UTF8")

            @property
            def dsn(self) -> str:
                return str(self._fluxrun_connect.get("target") or "")

            def get_dsn_parameters(self) -> dict[str, Any]:
                data = self._fluxrun_connect
                names = (("host", "host"), ("port", "port"), ("dbname", "db"), ("user", "user"))
                return {key: str(data[field]) for key, field in names if data.get(field) is not None}

            def get_parameter_status(self, name: str) -> Any:
                return (self._fluxrun_connect.get("parameters") or {}).get(name)

            def get_backend_pid(self) -> int:
                return 0

            @property
            def info(self) -> Any:
                return _ReplayedInfo(self)

            @property
            def notices(self) -> list[Any]:
                return []

            @property
            def notifies(self) -> list[Any]:
                return []

        for made in (Cursor, ReplayedCursor, Connection, ReplayedConnection):
            made.__qualname__ = made.__name__  # not `_Driver.__init__.<locals>.Cursor` in tracebacks
        self.Cursor = Cursor
        self.ReplayedCursor = ReplayedCursor
        self.Connection = Connection
        self.ReplayedConnection = ReplayedConnection

    # -- classes for an app's factories ----------------------------------------------------------------------
    @functools.cache  # noqa: B019 - one per process, the classes live as long as psycopg2
    def cursor_class(self, factory: Any, home: type) -> Any:
        """An app's cursor class (`RealDictCursor`...) with `home` under its own methods (they reach ours
        through `super()`); psycopg2's own cursor is `home` itself. Any other callable is psycopg2's to call."""
        if factory is None or factory is self.ext.cursor:
            return home
        if not (isinstance(factory, type) and issubclass(factory, self.ext.cursor)):
            return factory
        if issubclass(factory, home):
            return factory
        return type(factory.__name__, (factory, home), {"__module__": factory.__module__})

    @functools.cache  # noqa: B019 - as above
    def connection_class(self, factory: Any, home: type) -> Any:
        """An app's connection class (`connection_factory=`, `DictConnection`...) with `home` under it."""
        if factory is None or factory is self.ext.connection:
            return home
        if not (isinstance(factory, type) and issubclass(factory, self.ext.connection)):
            return factory
        if issubclass(factory, home):
            return factory
        return type(factory.__name__, (factory, home), {"__module__": factory.__module__})

    # -- capture ------------------------------------------------------------------------------------------------
    def run(self, cursor: Any, scope: Scope | None, op: str, query: Any, params: Any, caller: FrameType) -> Any:
        """A statement inside a capture (recorded), or (`scope` None) one made outside any while its
        connection is being set up (kept in the connection's profile)."""
        if scope is not None and scope.session is not None:
            raise db.not_replayable(DRIVER)
        if op == "executemany" and params is not None and not isinstance(params, (list, tuple)):
            params = list(params)  # a generator is read once: recorded and executed from this list
        sql_text, call = _statement(op, query)
        if _is_listen(sql_text):
            refuse_or_note("psycopg2 LISTEN", sql_text[7:].strip(), _NOTIFY)
        conn = cursor.connection
        data = {"driver": DRIVER, "op": op, "sql": sql_text, "params": _encoded(op, params)}
        if scope is None or (_setting_up and conn in _setting_up):
            entry = db.begin(None, conn, call, data)
            scope = None  # a setup call: answered from the connect event, out of order
        else:
            entry = db.begin_from(scope, conn, call, data, _described, caller)
        original = self.calls[op]
        if entry is None:
            return original(cursor, query, params)
        entry.build = _answer_data
        token = scope_var.set(None)
        try:
            out = original(cursor, query, params)
        except BaseException as exc:
            scope_var.reset(token)
            self.fail(entry, exc)
            raise
        try:
            result = self.snapshot(cursor, op, db.row_limit())
        except Exception as exc:  # never break the app's statement: recorded without its answer
            report_internal_error("psycopg2 capture", exc)
            result = None
        scope_var.reset(token)
        db.finish(entry, result, scope)
        return out

    def snapshot(self, cursor: Any, op: str, limit: int) -> tuple[Any, ...]:
        """What the statement returned, formatted by `_answer` only if the execution is kept: its rows read as
        tuples (the cursor then put back on its first row, so the app reads the result as it would have), its
        description (psycopg2's tuple of `Column`s, made anew by each statement), counts and status."""
        description = cursor.description
        rows: list[Any] = []
        more = False
        if description is not None and op != "executemany":
            more = cursor.rowcount > limit
            if limit and cursor.rowcount:
                factory = cursor.row_factory
                cursor.row_factory = None
                try:
                    rows = self.fetchmany(cursor, limit)
                finally:  # also when a row failed to convert (psycopg2 has moved past it): the app meets it too
                    if cursor.rownumber:
                        self.scroll(cursor, 0, "absolute")
                    cursor.row_factory = factory
        conn = cursor.connection
        status = conn.get_transaction_status()
        return (description, rows, limit, more, cursor.rowcount, cursor.lastrowid, cursor.statusmessage, status)

    def fail(self, entry: CallEntry | None, exc: BaseException) -> None:
        """The statement raised: its error, with psycopg2's `pgcode` and `pgerror` (C fields the value
        encoding does not see) in the call's data."""
        if entry is not None and isinstance(exc, self.error):
            with contextlib.suppress(Exception):
                entry.value["pgerror"] = {"pgcode": exc.pgcode, "pgerror": exc.pgerror}
        db.fail(entry, exc)

    def transaction(self, conn: Any, scope: Scope | None, op: str, call: Callable[[Any], None]) -> None:
        """A commit or rollback inside a capture (recorded) or a replay (served), or (`scope` None) one made
        while the connection is being set up (SQLAlchemy's dialect initialize rolls back: kept in its profile)."""
        replayed = isinstance(conn, self.ReplayedConnection)
        if replayed or (scope is not None and scope.session is not None):
            if not replayed:
                raise db.not_replayable(DRIVER)
            if conn._fluxrun_closed:
                raise self.psycopg2.InterfaceError("connection already closed")
            if scope is None or scope.session is None:
                raise self.psycopg2.InterfaceError(
                    "this psycopg2 connection was opened during a FluxRun replay and has no database outside it"
                )
            event = db.serve(scope, DRIVER, op, conn=conn, raise_error=False)
            _set_status(conn, event["data"].get("result"), event)
            self.raise_recorded(event)
            return
        if scope is None or (_setting_up and conn in _setting_up):
            entry = db.begin(None, conn, db.label(DRIVER, op), {"driver": DRIVER, "op": op})
            scope = None
        else:
            entry = db.begin_from(
                scope, conn, db.label(DRIVER, op), {"driver": DRIVER, "op": op}, _described, _getframe(2)
            )
        if entry is None:
            call(conn)
            return
        token = scope_var.set(None)
        try:
            call(conn)
        except BaseException as exc:
            scope_var.reset(token)
            self.fail(entry, exc)
            raise
        scope_var.reset(token)
        db.finish(entry, {"transaction_status": _status_of(conn)}, scope)

    # -- replay ---------------------------------------------------------------------------------------------------
    def serve(self, cursor: Any, op: str, query: Any, params: Any) -> None:
        """A statement on a replayed connection's cursor, answered from the recording; nothing is sent."""
        scope = current()
        conn = cursor.connection
        if scope is None or scope.session is None:
            raise self.psycopg2.InterfaceError(
                "this psycopg2 connection was opened during a FluxRun replay and has no database outside it"
            )
        if conn._fluxrun_closed:
            raise self.psycopg2.InterfaceError("connection already closed")
        if op == "executemany" and params is not None and not isinstance(params, (list, tuple)):
            params = list(params)
        sql_text = db.normalise_sql(query)
        if _is_listen(sql_text):
            refuse_or_note("psycopg2 LISTEN", sql_text[7:].strip(), _NOTIFY)
        cursor._fluxrun_buffer = None
        cursor._fluxrun_result = (None, -1, None, None)
        event = db.serve(scope, DRIVER, op, sql_text, _encoded(op, params), conn=conn, raise_error=False)
        result = event["data"].get("result")
        _set_status(conn, result, event)
        self.raise_recorded(event)
        result = result or {}
        recorded = decode(result.get("description"))
        description = None
        if recorded is not None:
            fields = ("name", "type_code", "display_size", "internal_size", "precision", "scale", "null_ok")
            description = tuple(self.ext.Column(**dict(zip(fields, column, strict=False))) for column in recorded)
        cursor._fluxrun_result = (
            description,
            result.get("rowcount", -1) if result.get("rowcount") is not None else -1,
            result.get("status"),
            decode(result.get("lastrowid")),
        )
        if description is not None:
            cursor._fluxrun_buffer = db.RowBuffer(
                _with_views(db.recorded_rows(result), result.get("memoryviews")),
                truncated=bool(result.get("truncated")),
                refuse=lambda: db.refuse_truncated(scope, event),
            )

    def raise_recorded(self, event: AnyEvent) -> None:
        """The recorded error raised again: a psycopg2 error as its own class (built by psycopg2, as the
        driver builds it) with its `pgcode` and `pgerror`; any other through the value encoding."""
        error = event.get("error")
        if error is None:
            return
        module_name, _, name = str(error.get("type", "")).partition(":")
        cls = getattr(sys.modules.get(module_name), name, None) if module_name.startswith("psycopg2") else None
        if not (isinstance(cls, type) and issubclass(cls, self.error)):
            raise_recorded_error(event)
            return
        exc = cls(str(error.get("message", "")))
        state = event["data"].get("pgerror")
        if isinstance(state, dict):
            with contextlib.suppress(Exception):
                exc.__setstate__({"pgcode": state.get("pgcode"), "pgerror": state.get("pgerror")})
        raise exc

    def replayed_connection(self, event: AnyEvent, connection_factory: Any, cursor_factory: Any) -> Any:
        cls = self.connection_class(connection_factory, self.ReplayedConnection)
        if not (isinstance(cls, type) and issubclass(cls, self.ReplayedConnection)):
            cls = self.ReplayedConnection  # an app's factory function: its own connection class is unknown
        conn = self.new_connection(cls)
        conn._fluxrun_connect = dict(event["data"])
        if cursor_factory is not None:
            conn.cursor_factory = cursor_factory
        return conn


class _ReplayedInfo:
    """`connection.info` of a replayed connection, from the recorded connect."""

    def __init__(self, conn: Any) -> None:
        data = conn._fluxrun_connect
        self.server_version = conn.server_version
        self.protocol_version = conn.protocol_version
        self.dbname = data.get("db")
        self.user = data.get("user")
        self.host = data.get("host")
        self.port = data.get("port")
        self.transaction_status = conn._fluxrun_status
        self.backend_pid = 0
        self.status = conn.status
        self.dsn_parameters = conn.get_dsn_parameters()
        self._parameters = data.get("parameters") or {}

    def parameter_status(self, name: str) -> Any:
        return self._parameters.get(name)


def _answer(taken: tuple[Any, ...]) -> dict[str, Any]:
    """`_Driver.snapshot`'s tuple as the event's `result`."""
    description, rows, limit, more, rowcount, lastrowid, status, transaction_status = taken
    columns = None
    if description is not None:
        columns = [
            [c.name, c.type_code, c.display_size, c.internal_size, c.precision, c.scale, c.null_ok] for c in description
        ]
    result = db.rows_result(
        rows,
        limit=limit,
        more=more,
        description=columns,
        rowcount=rowcount,
        lastrowid=lastrowid,
        status=status,
        transaction_status=transaction_status,
    )
    if rows and columns is not None and any(column[1] == _BYTEA for column in columns):
        views = [[r, c] for r, row in enumerate(rows[:limit]) for c, v in enumerate(row) if type(v) is memoryview]
        if views:
            result["memoryviews"] = views  # psycopg2 reads bytea as memoryview; the encoding keeps bytes
    return result


_answer_data = db.answer_build(_answer, "psycopg2 capture")


def _statement(op: str, query: Any) -> tuple[str, str]:
    """The statement's normalised text and label, kept per text: an app repeats its statements."""
    cache = _statements[op]
    known = cache.get(query) if type(query) is str else None
    if known is None:
        sql_text = db.normalise_sql(query)
        known = (sql_text, db.label(DRIVER, op, sql_text))
        if type(query) is str:
            if len(cache) >= _STATEMENTS_CACHED:
                cache.clear()
            cache[query] = known
    return known


# op -> statement text -> (normalised text, label)
_statements: dict[str, dict[str, tuple[str, str]]] = {"execute": {}, "executemany": {}, "callproc": {}}
_STATEMENTS_CACHED = 512


def _status_of(conn: Any) -> int | None:
    try:
        return int(conn.get_transaction_status())  # in C, where `conn.info` makes an object to ask
    except Exception:
        return None


def _set_status(conn: Any, result: Any, event: AnyEvent) -> None:
    """The replayed connection's transaction status as recorded after the call (an error leaves it failed)."""
    status = result.get("transaction_status") if isinstance(result, dict) else None
    if status is not None:
        conn._fluxrun_status = int(status)
    elif event.get("error") is not None and not conn._fluxrun_autocommit:
        conn._fluxrun_status = _INERROR


def _with_views(rows: list[Any], views: Any) -> list[Any]:
    """The recorded rows with their bytea values as psycopg2 gives them, memoryviews (`snapshot`)."""
    if not views:
        return rows
    changed = [list(row) for row in rows]
    for r, c in views:
        with contextlib.suppress(Exception):
            changed[r][c] = memoryview(changed[r][c])
    return [tuple(row) for row in changed]


def _encoded(op: str, params: Any) -> Any:
    if op == "executemany":
        return [db.encode_params(p) for p in params or ()]
    return db.encode_params(params)


def _connect_wrapper(driver: _Driver, original: Callable[..., Any]) -> Callable[..., Any]:
    def connect(dsn: Any = None, connection_factory: Any = None, cursor_factory: Any = None, **kwargs: Any) -> Any:
        scope = current()
        target = _target(dsn, kwargs)
        if scope is None and replaying_here():
            raise db.connect_refused(DRIVER, target)
        if kwargs.get("async") or kwargs.get("async_"):  # aiopg's: results come through poll(), not recorded
            refuse_or_note("psycopg2 asynchronous connection", target, _ASYNC)
            return original(dsn, connection_factory, cursor_factory, **kwargs)
        if scope is not None and scope.session is not None:
            event = db.serve(scope, DRIVER, "connect")
            conn = driver.replayed_connection(event, connection_factory, cursor_factory)
            db.replayed(conn, event)  # while SQLAlchemy or Django sets it up, answered from the recorded setup
            return conn
        factory = driver.connection_class(connection_factory, driver.Connection)
        if scope is None:
            conn = original(dsn, factory, cursor_factory, **kwargs)
            with contextlib.suppress(Exception):
                db.opened(conn, _connect_data(conn, target))  # a later execution's connect event
            return conn
        entry = db.start(scope, f"{DRIVER} connect {target}", {"driver": DRIVER, "op": "connect", "target": target})
        token = scope_var.set(None)
        try:
            conn = original(dsn, factory, cursor_factory, **kwargs)
        except BaseException as exc:
            scope_var.reset(token)
            db.fail(entry, exc)
            raise
        scope_var.reset(token)
        try:
            data = _connect_data(conn, target)
        except Exception as exc:
            report_internal_error("psycopg2 capture", exc)
            db.finish(entry)
            return conn
        db.connected(scope, entry, conn, data)
        return conn

    functools.update_wrapper(connect, original)
    return connect


class Psycopg2Interceptor:
    kind = db.KIND

    def __init__(self) -> None:
        self.psycopg2 = loaded("psycopg2")
        self.original: Any = None
        self.replacement: Any = None

    def _prepare(self) -> None:
        """The driver's classes and `connect` replacement, made once for `rebind` and `patches`."""
        psycopg2 = self.psycopg2
        if psycopg2 is None or self.replacement is not None:
            return
        try:
            driver = _Driver(psycopg2)
        except Exception:  # a psycopg2 without the parts this relies on: leave it alone
            self.psycopg2 = None
            return
        self.original = vars(psycopg2)["connect"]
        self.replacement = _connect_wrapper(driver, self.original)

    def patches(self) -> list[Patch]:
        self._prepare()
        if self.replacement is None:
            return []
        return [Patch(self.psycopg2, "connect", self.replacement)]

    def rebind(self) -> dict[int, Any]:
        self._prepare()
        return {} if self.replacement is None else {id(self.original): self.replacement}
