"""sqlite3, recorded at capture and answered at replay: every statement, its parameters and what it returned.

sqlite3's `Connection` and `Cursor` are C types whose methods cannot be patched, so `sqlite3.connect` (and
`sqlite3.dbapi2.connect`, which SQLAlchemy's pysqlite dialect calls) opens the connection with a `factory`:
`Connection`, a subclass of sqlite's own, whose statements run on `Cursor`, a subclass of sqlite's own cursor.
Only what must be seen is overridden (statements, commit, rollback, `with conn:`), so the app keeps sqlite's
types and, outside a capture, a statement costs one context-variable read; fetching and iterating stay C.

Inside a capture a statement runs, its rows (up to the row limit) are read at once and recorded, and the
cursor switches its class (`__class__`, same layout) to a variant whose fetches read that copy; the next
statement outside a capture switches it back. At replay `connect` opens only an in-memory connection (no
file, nothing written) and every statement, commit and rollback is answered from the recording, by a cursor
variant that also answers `description`, `rowcount` and `lastrowid`; a connection opened before the replay
started is not used for statements made inside it. Row factories (`sqlite3.Row`, custom ones) are applied to
the recorded rows, so the app sees the same rows at capture and replay.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterable
from functools import cache
from itertools import chain
from sys import _getframe
from types import FrameType
from typing import Any

from fluxrun._context import Scope, current, scope_var
from fluxrun.interceptors import db_common as db
from fluxrun.interceptors.base import Patch
from fluxrun.interceptors.db_common import setting_up as _setting_up
from fluxrun.interceptors.unrecorded import refuse_or_note
from fluxrun.model.values import decode

__all__ = ["Connection", "Cursor", "SqliteInterceptor"]

DRIVER = "sqlite3"
_FACTORY_POSITION = 5  # connect(database, timeout, detect_types, isolation_level, check_same_thread, factory)

# sqlite's own methods, called unbound: the idle path goes straight to C
_cursor = sqlite3.Connection.cursor
_execute = sqlite3.Cursor.execute
_executemany = sqlite3.Cursor.executemany
_executescript = sqlite3.Cursor.executescript
_fetchmany = sqlite3.Cursor.fetchmany
_fetchall = sqlite3.Cursor.fetchall
_commit = sqlite3.Connection.commit
_rollback = sqlite3.Connection.rollback
_exit = sqlite3.Connection.__exit__
_blobopen = sqlite3.Connection.blobopen
_backup = sqlite3.Connection.backup
_CALL: dict[str, Callable[[Any, Any, Any], Any]] = {"execute": _execute, "executemany": _executemany}


class Cursor(sqlite3.Cursor):
    """sqlite's cursor; its statements look at the context, everything else is sqlite's own."""

    # slots, not a __dict__: an instance with a dict costs more to make and free, on every statement
    __slots__ = ("_fluxrun_buffer", "_fluxrun_make", "_fluxrun_result")

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        scope = current()
        if scope is None:
            if not _setting_up:
                return _execute(self, sql, parameters)
            return _run(self, None, "execute", sql, parameters, _getframe(1))
        return _run(self, scope, "execute", sql, parameters, _getframe(1))

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> Any:
        scope = current()
        if scope is None:
            if not _setting_up:
                return _executemany(self, sql, seq_of_parameters)
            return _run(self, None, "executemany", sql, seq_of_parameters, _getframe(1))
        return _run(self, scope, "executemany", sql, seq_of_parameters, _getframe(1))

    def executescript(self, sql_script: str, /) -> Any:
        scope = current()
        if scope is None:
            if not _setting_up:
                return _executescript(self, sql_script)
            return _run(self, None, "executescript", sql_script, None, _getframe(1))
        return _run(self, scope, "executescript", sql_script, None, _getframe(1))


class _ReplayOnlyCursor(Cursor):
    """A cursor of a connection opened during a replay: there is no database behind it outside the replay."""

    __slots__ = ()

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        return _run(self, _replaying(), "execute", sql, parameters, _getframe(1))

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any], /) -> Any:
        return _run(self, _replaying(), "executemany", sql, seq_of_parameters, _getframe(1))

    def executescript(self, sql_script: str, /) -> Any:
        return _run(self, _replaying(), "executescript", sql_script, None, _getframe(1))


def _replaying() -> Scope:
    scope = current()
    if scope is None:
        raise sqlite3.ProgrammingError(
            "this sqlite3 connection was opened during a FluxRun replay and has no database outside it"
        )
    return scope


class _Buffered:
    """Mixed in front of a cursor class while its last statement's rows are the recorded (or served) copy."""

    __slots__ = ()

    _fluxrun_buffer: db.RowBuffer
    _fluxrun_make: Callable[[Any], Any] | None

    def fetchone(self) -> Any:
        row = self._fluxrun_buffer.one()
        make = self._fluxrun_make
        return row if row is None or make is None else make(row)

    def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._shape(self._fluxrun_buffer.take(self.arraysize if size is None else size))  # type: ignore[attr-defined]

    def fetchall(self) -> list[Any]:
        return self._shape(self._fluxrun_buffer.take(None))

    def _shape(self, rows: list[Any]) -> list[Any]:
        make = self._fluxrun_make
        return rows if make is None else [make(r) for r in rows]

    def __iter__(self) -> Any:
        return self

    def __next__(self) -> Any:
        row = self.fetchone()
        if row is None:
            raise StopIteration
        return row


class _Served(_Buffered):
    """At replay nothing ran: the statement's description, rowcount and lastrowid are the recorded ones."""

    __slots__ = ()

    _fluxrun_result: tuple[Any, int, Any]

    @property
    def description(self) -> Any:
        return self._fluxrun_result[0]

    @property
    def rowcount(self) -> int:
        return self._fluxrun_result[1]

    @property
    def lastrowid(self) -> Any:
        return self._fluxrun_result[2]


@cache
def _variant(mixin: type, home: type) -> type:
    """`home` (a cursor class) with `mixin` in front (`db.mixed_in`), remembered as made from `home`; for an
    app's cursor factory, under the factory's own methods (its `fetchone` shapes the rows `mixin` serves)."""
    parts = _factory_parts.get(home)
    if parts is None:
        variant = db.mixed_in(mixin, home)
    else:
        factory, base = parts
        namespace = {"__module__": home.__module__, "__qualname__": home.__qualname__, "__slots__": ()}
        variant = type(home.__name__, (factory, mixin, base), namespace)
    _homes[variant] = home
    return variant


# a class `_variant` made -> the cursor class it was made from. Looked up by the cursor's type, not kept in a
# slot: reading a slot never set (every new cursor's) raises and catches an AttributeError, twice a statement
_homes: dict[type, type] = {}


def _set_state(cursor: Any, mixin: type, buffer: db.RowBuffer, make: Callable[[Any], Any] | None) -> None:
    home: type = cursor.__class__
    home = _homes.get(home, home)
    cursor._fluxrun_buffer = buffer
    cursor._fluxrun_make = make
    cursor.__class__ = _variant(mixin, home)


def _run(cursor: Any, scope: Scope | None, op: str, sql: Any, parameters: Any, caller: FrameType) -> Any:
    """A statement inside a capture (recorded) or a replay (served), on any of this module's cursors, or (`scope`
    None) one made outside both while its connection is being set up (kept in the connection's profile).
    `caller`: the frame that called sqlite3, where the walk to the app's frame starts (past none of FluxRun's)."""
    home = _homes.get(type(cursor))
    if home is not None:
        cursor.__class__ = home  # the previous statement's copy is gone: sqlite's own fetches again
    if op == "executemany" and parameters is not None and not isinstance(parameters, (list, tuple)):
        parameters = list(parameters)  # a generator is read once: recorded and executed from this list
    sql_text = db.normalise_sql(sql)
    params: Any
    if op == "executemany":
        params = [db.encode_params(p) for p in parameters]
    else:
        params = db.encode_params(parameters) if parameters not in ((), None) else None
    if scope is not None and scope.session is not None:
        _serve(cursor, scope, op, sql_text, params)
    else:
        _record(cursor, scope, op, sql, sql_text, parameters, params, caller)
    return cursor


def _record(
    cursor: Any, scope: Scope | None, op: str, sql: Any, sql_text: str, parameters: Any, params: Any, caller: FrameType
) -> None:
    if isinstance(cursor, _ReplayOnlyCursor):
        raise sqlite3.ProgrammingError(
            "this sqlite3 connection was opened during a FluxRun replay and has no database outside it"
        )
    data = {"driver": DRIVER, "op": op, "sql": sql_text, "params": params}
    if scope is None or (_setting_up and cursor.connection in _setting_up):
        # the connection is being set up (in an execution or not): the call is kept in its profile
        entry = db.begin(None, cursor.connection, db.label(DRIVER, op, sql_text), data)
        scope = None  # no completion number: a setup call is answered from the connect event, out of order
    else:
        _attach(scope, cursor.connection)
        entry = db.start(scope, db.label(DRIVER, op, sql_text), data, caller)
    factory = cursor.row_factory
    token = scope_var.set(None)
    try:
        cursor.row_factory = None  # raw rows are recorded; the factory is applied to the copy, as at replay
        if op == "executescript":
            _executescript(cursor, sql)
        else:
            _CALL[op](cursor, sql, parameters)
        description = cursor.description
        limit = db.row_limit()
        rows = _fetchmany(cursor, limit + 1) if description is not None else []
    except BaseException as exc:
        scope_var.reset(token)
        cursor.row_factory = factory
        db.fail(entry, exc)
        raise
    scope_var.reset(token)
    cursor.row_factory = factory
    more = len(rows) > limit
    # the rest is read live only past the limit; otherwise no closure over the cursor that the cursor holds
    # (a reference cycle per statement, left to the cyclic collector)
    buffer = db.RowBuffer(rows, truncated=more, more=_live_rows(cursor) if more else None)
    _set_state(cursor, _Buffered, buffer, _row_maker(factory, cursor, description))
    taken = (rows, limit, more, description, cursor.rowcount, cursor.lastrowid)
    if entry is not None and _ATOMS.issuperset(map(type, chain.from_iterable(rows))):
        # sqlite3's own values (no converter made anything else) cannot change: kept as they came, with the
        # description and counts, and formatted only if the execution is kept (most are dropped)
        entry.build = _answer_data
        db.finish(entry, taken, scope)
        return
    db.finish(entry, _answer(taken), scope)


def _live_rows(cursor: Any) -> Callable[[int | None], list[Any]]:
    """The rows past the row limit, read from the live cursor as the app asks for them (raw: the buffer's
    row maker shapes them). A function of its own: a closure made in `_record` would give every statement a
    cell for the cursor."""

    def more_live(count: int | None) -> list[Any]:
        saved, cursor.row_factory = cursor.row_factory, None
        try:
            return list(_fetchall(cursor) if count is None else _fetchmany(cursor, count))
        finally:
            cursor.row_factory = saved

    return more_live


# the types of the values sqlite3 itself returns (a converter or text factory can return others)
_ATOMS = frozenset({int, float, str, bytes, type(None)})


def _answer(taken: tuple[Any, ...]) -> dict[str, Any]:
    """`_record`'s answer of a statement (rows, limit, more, description, rowcount, lastrowid) as recorded."""
    rows, limit, more, description, rowcount, lastrowid = taken
    return db.rows_result(rows, limit=limit, more=more, description=description, rowcount=rowcount, lastrowid=lastrowid)


_answer_data = db.answer_build(_answer, "sqlite3 capture")


def _attach(scope: Scope, conn: Any) -> None:
    """Before a connection's first statement in an execution, its connect event, when the connection was opened
    before it (`db.attach`): a fresh process replaying it connects there. Checked per statement by the key of
    the last execution it was attached to, kept on the connection."""
    recording = scope.recording
    attached = getattr(conn, "_fluxrun_attached", None)
    if attached is None or attached[0] != id(recording) or attached[1] != recording.started_ns:
        db.attach(scope, conn)
        _mark_attached(conn, scope)


def _mark_attached(conn: Any, scope: Scope) -> None:
    with contextlib.suppress(AttributeError, TypeError):  # a connection class FluxRun did not make
        conn._fluxrun_attached = (id(scope.recording), scope.recording.started_ns)


def _taken_connect(scope: Scope, conn: Any) -> None:
    """At replay, a connection that did not connect in this replay (a pool warm before it started) takes the
    connect event its execution recorded before its first statement, as a fresh process's connect would."""
    recording = scope.recording
    attached = getattr(conn, "_fluxrun_attached", None)
    if attached is not None and attached[0] == id(recording) and attached[1] == recording.started_ns:
        return
    upcoming = db.peek(scope, lambda data: True)
    if upcoming is not None and upcoming.get("op") == "connect" and upcoming.get("driver") == DRIVER:
        db.serve(scope, DRIVER, "connect")
    _mark_attached(conn, scope)


def _serve(cursor: Any, scope: Scope, op: str, sql_text: str, params: Any) -> None:
    conn = cursor.connection
    if not (db.setting_up and conn in db.setting_up):
        _taken_connect(scope, conn)
    event = db.serve(scope, DRIVER, op, sql_text, params, conn=conn)
    result = event["data"].get("result") or {}
    recorded = decode(result.get("description"))
    description = tuple(tuple(d) for d in recorded) if recorded else None
    buffer = db.RowBuffer(
        db.recorded_rows(result),
        truncated=bool(result.get("truncated")),
        refuse=lambda: db.refuse_truncated(scope, event),
    )
    factory = cursor.row_factory
    cursor._fluxrun_result = (description, result.get("rowcount", -1), decode(result.get("lastrowid")))
    _set_state(cursor, _Served, buffer, _row_maker(factory, cursor, description))


def _row_maker(factory: Any, cursor: Any, description: Any) -> Callable[[Any], Any] | None:
    if factory is None:
        return None
    if factory is sqlite3.Row:
        names = [d[0] for d in description or ()]
        # sqlite3.Row takes its column names from a cursor: one in memory (no file) that selected them
        scratch = sqlite3.Connection(":memory:", check_same_thread=False).cursor()
        columns = ", ".join(f'NULL AS "{name.replace(chr(34), chr(34) * 2)}"' for name in names) or "NULL"
        scratch.execute(f"SELECT {columns}")
        return lambda row: sqlite3.Row(scratch, row)
    return lambda row: factory(cursor, row)


_DEFAULT: Any = object()  # `Connection.cursor` called without a factory


class Connection(sqlite3.Connection):
    """sqlite's connection; its statements, commits and rollbacks look at the context."""

    _fluxrun_cursor: type = Cursor
    _fluxrun_attached: tuple[int, int] | None = None  # the last execution it was attached to (`_attach`)

    def cursor(self, factory: Any = _DEFAULT) -> Any:
        if factory is _DEFAULT:
            return _cursor(self, self._fluxrun_cursor)
        if not (isinstance(factory, type) and issubclass(factory, sqlite3.Cursor)):
            return _cursor(self, factory)  # any other callable, as sqlite3 takes it (and refuses None): not ours
        return _cursor(self, _cursor_class(factory, self._fluxrun_cursor))

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        scope = current()
        if scope is None:
            if not _setting_up:
                return _execute(_cursor(self, Cursor), sql, parameters)
            return _run(_cursor(self, Cursor), None, "execute", sql, parameters, _getframe(1))
        return _run(_cursor(self, self._fluxrun_cursor), scope, "execute", sql, parameters, _getframe(1))

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Any:
        return self.cursor().executemany(sql, parameters)

    def executescript(self, sql_script: str, /) -> Any:
        return self.cursor().executescript(sql_script)

    def commit(self) -> None:
        scope = current()
        if scope is None and not _setting_up:
            _commit(self)
        else:
            _transaction(self, scope, "commit", _commit)

    def rollback(self) -> None:
        scope = current()
        if scope is None and not _setting_up:
            _rollback(self)
        else:
            _transaction(self, scope, "rollback", _rollback)

    def blobopen(self, table: str, column: str, row: int, /, **options: Any) -> Any:
        refuse_or_note("sqlite3 blobopen", table, _DIRECT)
        return _blobopen(self, table, column, row, **options)

    def backup(self, target: Any, **options: Any) -> Any:
        refuse_or_note("sqlite3 backup", "to another database", _DIRECT)
        return _backup(self, target, **options)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
        """As sqlite3's own (commit when the block succeeded, else roll back), through the recorded calls."""
        if current() is None:
            return _exit(self, exc_type, exc, tb)
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.rollback()
                raise
        else:
            self.rollback()
        return False


# why `blobopen` and `backup` are not recorded; at replay they would run against the real file of a connection
# opened before the replay
_DIRECT = "it reads or writes the database directly, outside any statement"


class _ReplayedConnection(Connection):
    """What `connect` returns during a replay: an in-memory connection (no file) whose statements are answered."""

    _fluxrun_cursor = _ReplayOnlyCursor

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        return _run(_cursor(self, _ReplayOnlyCursor), _replaying(), "execute", sql, parameters, _getframe(1))


def _transaction(conn: Any, scope: Scope | None, op: str, call: Callable[[Any], None]) -> None:
    """A commit or rollback inside a capture (recorded) or a replay (served), or (`scope` None) one made while
    the connection is being set up (SQLAlchemy's dialect initialize rolls back: kept in its profile)."""
    if scope is not None and scope.session is not None:
        if not (db.setting_up and conn in db.setting_up):
            _taken_connect(scope, conn)
        db.serve(scope, DRIVER, op, conn=conn)
        return
    if isinstance(conn, _ReplayedConnection):
        return
    if scope is None or (_setting_up and conn in _setting_up):
        entry = db.begin(None, conn, db.label(DRIVER, op), {"driver": DRIVER, "op": op})
        scope = None
    else:
        _attach(scope, conn)
        entry = db.start(scope, db.label(DRIVER, op), {"driver": DRIVER, "op": op})
    token = scope_var.set(None)
    try:
        call(conn)
    except BaseException as exc:
        scope_var.reset(token)
        db.fail(entry, exc)
        raise
    scope_var.reset(token)
    db.finish(entry, None, scope)


@cache
def _cursor_class(factory: type, home: type) -> type:
    """An app's own cursor class with this module's statements under it: the factory's own methods run first
    (Django's sqlite backend rewrites `%s` to `?` in its `execute`) and reach ours through `super()`, so what is
    recorded and answered is what sqlite3 itself receives."""
    if issubclass(factory, home):
        return factory
    combined = type(factory.__name__, (factory, home), {"__module__": factory.__module__})
    _factory_parts[combined] = (factory, home)
    return combined


# a class `_cursor_class` made -> (the app's factory, this module's cursor class under it)
_factory_parts: dict[type, tuple[type, type]] = {}


@cache
def _connection_class(factory: Any) -> Any:
    """An app's own connection class (`connect(factory=...)`) with this module's overrides under its own methods
    (they reach ours through `super()`, as a cursor factory's do). Any other callable is sqlite3's to call as it
    is: its connections are not intercepted."""
    if factory is sqlite3.Connection:
        return Connection
    if not (isinstance(factory, type) and issubclass(factory, sqlite3.Connection)):
        return factory
    if issubclass(factory, Connection):
        return factory
    return type(factory.__name__, (factory, Connection), {"__module__": factory.__module__})


def _target(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    database = args[0] if args else kwargs.get("database", "")
    return db.mask_dsn(database if isinstance(database, str) else repr(database))


def _with_factory(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if len(args) > _FACTORY_POSITION:
        factory = _connection_class(args[_FACTORY_POSITION])
        return (*args[:_FACTORY_POSITION], factory, *args[_FACTORY_POSITION + 1 :]), kwargs
    return args, {**kwargs, "factory": _connection_class(kwargs.get("factory") or sqlite3.Connection)}


def _connect_wrapper(original: Callable[..., Any]) -> Callable[..., Any]:
    def connect(*args: Any, **kwargs: Any) -> Any:
        scope = current()
        target = _target(args, kwargs)
        if scope is None:
            args, kwargs = _with_factory(args, kwargs)
            conn = original(*args, **kwargs)
            db.opened(conn, {"driver": DRIVER, "op": "connect", "target": target})  # a later execution's event
            return conn
        if scope.session is not None:
            event = db.serve(scope, DRIVER, "connect")
            replayed = _ReplayedConnection(":memory:", check_same_thread=False)
            _mark_attached(replayed, scope)
            db.replayed(replayed, event)  # while SQLAlchemy sets it up, answered from the recorded setup
            return replayed
        args, kwargs = _with_factory(args, kwargs)
        entry = db.start(scope, f"{DRIVER} connect {target}", {"driver": DRIVER, "op": "connect", "target": target})
        token = scope_var.set(None)
        try:
            conn = original(*args, **kwargs)
        except BaseException as exc:
            scope_var.reset(token)
            db.fail(entry, exc)
            raise
        scope_var.reset(token)
        db.connected(scope, entry, conn, {"driver": DRIVER, "op": "connect", "target": target})
        _mark_attached(conn, scope)
        return conn

    connect.__wrapped__ = original  # type: ignore[attr-defined]
    connect.__doc__ = original.__doc__
    connect.__name__ = "connect"
    return connect


class SqliteInterceptor:
    kind = db.KIND

    def __init__(self) -> None:
        self.original = sqlite3.connect
        self.replacement = _connect_wrapper(self.original)

    def patches(self) -> list[Patch]:
        import sqlite3.dbapi2 as dbapi2

        return [
            Patch(sqlite3, "connect", self.replacement),
            Patch(dbapi2, "connect", self.replacement),
        ]

    def rebind(self) -> dict[int, Any]:
        return {id(self.original): self.replacement}
