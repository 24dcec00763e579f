"""asyncpg: `connect`, `Connection.execute/executemany/fetch/fetchrow/fetchval` and transactions.

Capture records each call with its arguments and what it returned (rows as tuples with their column
names, the value, or the command status). `Transaction.start`, commit and rollback are recorded as
`begin`, `commit` and `rollback` calls (the `BEGIN` they send is part of them, not a statement of its own).

Prepared statements (`Connection.prepare`, which SQLAlchemy's asyncpg dialect uses for every statement):
`prepare` is recorded with the statement's attributes and parameter types, and each execution of a prepared
statement (`fetch`, `fetchrow`, `fetchval`, `executemany`) as a call of its own with its SQL, parameters,
result, status message and attributes. `set_type_codec` (SQLAlchemy's on_connect) is recorded too.

At replay `asyncpg.connect` returns a connection with no server behind it whose methods answer from the
recording; rows come back as records that index by position and by name like `asyncpg.Record`. A
`prepare` is answered by the recorded prepare of that statement or, when the capture's connection had it
cached already (a warm SQLAlchemy pool prepares a statement once per connection), by the attributes
recorded with the statement's next execution. Cursors (`conn.cursor`, a prepared statement's `cursor`):
each round trip is a call of its own (see "cursors" below). COPY is not intercepted.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import Any

from fluxrun._context import Scope, current, scope_var
from fluxrun._internal import report_internal_error
from fluxrun.errors import LiveIOBlocked
from fluxrun.interceptors import db_common as db
from fluxrun.interceptors.base import Patch, loaded
from fluxrun.interceptors.unrecorded import refusal, unrecorded_method
from fluxrun.model.recording import CallEntry
from fluxrun.model.schema import AnyEvent, DbData, EventDict
from fluxrun.model.values import decode, encode

__all__ = ["AsyncpgInterceptor", "ReplayedRecord"]

DRIVER = "asyncpg"
_TRANSACTION_OPS = {"start": "begin", "_Transaction__commit": "commit", "_Transaction__rollback": "rollback"}


class ReplayedRecord:
    """A recorded row at replay: `row[0]`, `row["name"]`, `row.get`, `keys()`, `values()`, `items()`, `dict(row)`."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: list[str], values: tuple[Any, ...]) -> None:
        self._names = names
        self._values = values

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            try:
                return self._values[self._names.index(key)]
            except ValueError:
                raise KeyError(key) from None
        return self._values[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._values[self._names.index(key)] if key in self._names else default

    def keys(self) -> Iterator[str]:
        return iter(self._names)

    def values(self) -> Iterator[Any]:
        return iter(self._values)

    def items(self) -> Iterator[tuple[str, Any]]:
        return iter(zip(self._names, self._values, strict=True))

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, value: Any) -> bool:
        return value in self._values

    def __eq__(self, other: object) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, (tuple, ReplayedRecord)) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._values)

    def __repr__(self) -> str:
        return "<Record " + " ".join(f"{n}={v!r}" for n, v in self.items()) + ">"


def _rows_result(op: str, out: Any, limit: int) -> dict[str, Any]:
    if op == "execute":
        return {"status": out}
    if op == "executemany":
        return {}
    if op == "fetchval":
        return {"value": encode(out)}
    records = [out] if op == "fetchrow" and out is not None else (list(out) if op == "fetch" else [])
    names = list(records[0].keys()) if records else []
    return db.rows_result([tuple(r) for r in records], limit=limit, more=False, description=names, rowcount=None)


def _attributes(stmt: Any) -> list[list[Any]]:
    return [[a.name, a.type.oid, a.type.name, a.type.kind, a.type.schema] for a in stmt.get_attributes()]


def _prepare_result(stmt: Any) -> dict[str, Any]:
    return {
        "attributes": _attributes(stmt),
        "parameters": [[t.oid, t.name, t.kind, t.schema] for t in stmt.get_parameters()],
    }


def _answer(scope: Scope, op: str, event: EventDict[DbData]) -> Any:
    result = event["data"].get("result") or {}
    if op == "execute":
        return result.get("status")
    if op == "executemany":
        return None
    if op == "fetchval":
        return decode(result.get("value"))
    names = decode(result.get("description")) or []
    records = [ReplayedRecord(names, row) for row in db.recorded_rows(result)]
    if result.get("truncated"):
        raise db.refuse_truncated(scope, event)
    if op == "fetchrow":
        return records[0] if records else None
    return records


def _params(op: str, args: tuple[Any, ...]) -> Any:
    if op == "executemany":
        return [db.encode_params(a) for a in (args[0] if args else [])]
    return db.encode_params(args) if args else None


class ReplayedTransaction:
    """`conn.transaction()` at replay: begin, commit and rollback are answered from the recording."""

    def __init__(self, connection: ReplayedConnection) -> None:
        self.connection = connection

    async def start(self) -> None:
        _serve_only("begin", conn=self.connection)

    async def commit(self) -> None:
        _serve_only("commit", conn=self.connection)

    async def rollback(self) -> None:
        _serve_only("rollback", conn=self.connection)

    async def __aenter__(self) -> ReplayedTransaction:
        await self.start()
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            await self.commit()
        else:
            await self.rollback()


def _serve_only(op: str, sql: str | None = None, params: Any = None, *, conn: Any = None) -> AnyEvent:
    scope = current()
    if scope is None or scope.session is None:
        raise LiveIOBlocked(f"an asyncpg connection opened during a replay was used outside it ({op})")
    return db.serve(scope, DRIVER, op, sql, params, conn=conn)


class ReplayedPreparedStatement:
    """A prepared statement at replay: its attributes as recorded, each execution answered from the recording."""

    def __init__(self, connection: ReplayedConnection, sql: str, result: dict[str, Any]) -> None:
        from asyncpg.types import Attribute, Type  # type: ignore[import-untyped]

        self._connection = connection
        self._query = sql
        self._status: Any = None
        self._attributes = tuple(
            Attribute(name, Type(oid, tname, kind, schema)) for name, oid, tname, kind, schema in result["attributes"]
        )
        self._parameters = tuple(Type(*t) for t in result.get("parameters") or ())

    def get_query(self) -> str:
        return self._query

    def get_name(self) -> str:
        return ""

    def get_attributes(self) -> Any:
        return self._attributes

    def get_parameters(self) -> Any:
        return self._parameters

    def get_statusmsg(self) -> Any:
        return self._status

    async def _call(self, op: str, args: tuple[Any, ...]) -> Any:
        scope = current()
        event = _serve_only(op, self._query, _params(op, args), conn=self._connection)
        self._status = (event["data"].get("result") or {}).get("status")
        assert scope is not None
        return _answer(scope, op, event)

    async def fetch(self, *args: Any, timeout: Any = None) -> Any:
        return await self._call("fetch", args)

    async def fetchrow(self, *args: Any, timeout: Any = None) -> Any:
        return await self._call("fetchrow", args)

    async def fetchval(self, *args: Any, column: int = 0, timeout: Any = None) -> Any:
        return await self._call("fetchval", args)

    async def executemany(self, args: Any, *, timeout: Any = None) -> Any:
        return await self._call("executemany", (list(args),))

    def cursor(self, *args: Any, prefetch: Any = None, timeout: Any = None) -> Any:
        return ReplayedCursorFactory(self._connection, self._query, args, prefetch)


# -- cursors ----------------------------------------------------------------------------------------------------
# asyncpg's cursors open a portal (`_bind_exec` when iterated, taking the first `prefetch` rows; `_bind` when
# awaited), then read more rows (`_exec`) or skip some (`Cursor.forward`), each a round trip. Each is recorded as
# a call of its own: `cursor` (the query, its arguments and the rows the portal's first execution returned),
# `cursor_fetch` and `cursor_forward`, with whether the portal was then exhausted. At replay the replayed
# connection's cursors follow asyncpg's own logic and answer each of those calls from the recording, in order.


def _cursor_rows(scope: Scope, event: EventDict[DbData]) -> tuple[list[Any], bool]:
    result = event["data"].get("result") or {}
    return _answer(scope, "fetch", event), bool(result.get("exhausted"))


class ReplayedCursorFactory:
    """`conn.cursor(query, *args)` at replay: iterated (prefetching) or awaited (a `ReplayedCursor`)."""

    def __init__(self, connection: Any, query: str, args: tuple[Any, ...], prefetch: int | None) -> None:
        self._connection = connection
        self._sql = db.normalise_sql(query)
        self._args = args
        self._prefetch = prefetch

    def __aiter__(self) -> ReplayedCursorIterator:
        prefetch = 50 if self._prefetch is None else self._prefetch
        return ReplayedCursorIterator(self._connection, self._sql, self._args, prefetch)

    def __await__(self) -> Any:
        if self._prefetch is not None:
            from asyncpg import exceptions  # type: ignore[import-untyped]

            raise exceptions.InterfaceError("prefetch argument can only be specified for iterable cursor")
        return ReplayedCursor(self._connection, self._sql, self._args)._init().__await__()


class _ReplayedPortal:
    """What a replayed cursor and cursor iterator share: their query, arguments and exhausted portal."""

    def __init__(self, connection: Any, sql: str, args: tuple[Any, ...]) -> None:
        self._connection = connection
        self._sql = sql
        self._params = _params("fetch", args)
        self._exhausted = False

    def _serve(self, op: str) -> EventDict[DbData]:
        return _serve_only(op, self._sql, self._params, conn=self._connection)

    def _rows(self, op: str) -> list[Any]:
        scope = current()
        assert scope is not None
        rows, self._exhausted = _cursor_rows(scope, self._serve(op))
        return rows


class ReplayedCursorIterator(_ReplayedPortal):
    """`async for row in conn.cursor(...)` at replay: the portal's first rows, then each further fetch."""

    def __init__(self, connection: Any, sql: str, args: tuple[Any, ...], prefetch: int) -> None:
        super().__init__(connection, sql, args)
        if prefetch <= 0:  # as asyncpg checks it (the rows each fetch returned are the recorded ones)
            from asyncpg import exceptions

            raise exceptions.InterfaceError("prefetch argument must be greater than zero")
        self._buffer: collections.deque[Any] = collections.deque()
        self._opened = False

    def __aiter__(self) -> ReplayedCursorIterator:
        return self

    async def __anext__(self) -> Any:
        if not self._opened:
            self._opened = True
            self._buffer.extend(self._rows("cursor"))
        if not self._buffer and not self._exhausted:
            self._buffer.extend(self._rows("cursor_fetch"))
        if self._buffer:
            return self._buffer.popleft()
        raise StopAsyncIteration


class ReplayedCursor(_ReplayedPortal):
    """`await conn.cursor(...)` at replay: `fetch`, `fetchrow` and `forward` answered from the recording."""

    async def _init(self) -> ReplayedCursor:
        self._rows("cursor")
        return self

    async def fetch(self, n: int, *, timeout: Any = None) -> list[Any]:
        if n <= 0:
            from asyncpg import exceptions

            raise exceptions.InterfaceError("n must be greater than zero")
        return [] if self._exhausted else self._rows("cursor_fetch")

    async def fetchrow(self, *, timeout: Any = None) -> Any:
        if self._exhausted:
            return None
        rows = self._rows("cursor_fetch")
        return rows[0] if rows else None

    async def forward(self, n: int, *, timeout: Any = None) -> int:
        event = self._serve("cursor_forward")
        result = event["data"].get("result") or {}
        self._exhausted = bool(result.get("exhausted"))
        advanced = result.get("advanced")
        return advanced if type(advanced) is int else 0


class ReplayedConnection:
    """An asyncpg connection with no server: every call is answered from the recording."""

    def __init__(self, recorded: dict[str, Any]) -> None:
        self._closed = False
        self._server_version = recorded.get("server_version")

    async def _call(self, op: str, query: str, args: tuple[Any, ...]) -> Any:
        scope = current()
        event = _serve_only(op, db.normalise_sql(query), _params(op, args), conn=self)
        assert scope is not None
        return _answer(scope, op, event)

    async def prepare(self, query: str, *, name: Any = None, timeout: Any = None, record_class: Any = None) -> Any:
        sql = db.normalise_sql(query)
        scope = current()
        if scope is None or scope.session is None:
            raise LiveIOBlocked("an asyncpg connection opened during a replay was used outside it (prepare)")
        if not (db.setting_up and self in db.setting_up):
            executed = db.peek(scope, lambda d: d.get("sql") == sql and (d.get("op") == "prepare" or "attributes" in d))
            if executed is not None and executed.get("op") != "prepare":  # prepared before the capture: not recorded
                return ReplayedPreparedStatement(self, sql, executed)
        event = _serve_only("prepare", sql, conn=self)
        return ReplayedPreparedStatement(self, sql, event["data"].get("result") or {"attributes": []})

    async def set_type_codec(self, typename: str, *, schema: str = "public", format: str = "text", **kw: Any) -> None:
        _serve_only("set_type_codec", None, db.encode_params([typename, schema, format]), conn=self)

    async def reload_schema_state(self) -> None:
        pass

    async def execute(self, query: str, *args: Any, timeout: Any = None) -> Any:
        return await self._call("execute", query, args)

    async def executemany(self, command: str, args: Any, *, timeout: Any = None) -> Any:
        return await self._call("executemany", command, (list(args),))

    async def fetch(self, query: str, *args: Any, timeout: Any = None, record_class: Any = None) -> Any:
        return await self._call("fetch", query, args)

    async def fetchrow(self, query: str, *args: Any, timeout: Any = None, record_class: Any = None) -> Any:
        return await self._call("fetchrow", query, args)

    async def fetchval(self, query: str, *args: Any, column: int = 0, timeout: Any = None) -> Any:
        return await self._call("fetchval", query, args)

    def transaction(self, **options: Any) -> ReplayedTransaction:
        return ReplayedTransaction(self)

    def cursor(
        self, query: str, *args: Any, prefetch: Any = None, timeout: Any = None, record_class: Any = None
    ) -> Any:
        return ReplayedCursorFactory(self, query, args, prefetch)

    def is_closed(self) -> bool:
        return self._closed

    async def reset(self, *, timeout: Any = None) -> None:
        _serve_only("reset", conn=self)

    async def _reset(self) -> None:
        """asyncpg's rollback of a transaction left open, before a pool's own reset callable: the recorded
        ROLLBACK, when it is the connection's next call (there was a transaction to roll back)."""
        scope = current()
        if scope is not None and scope.session is not None:
            upcoming = db.peek(scope, lambda data: data.get("driver") == DRIVER)
            if upcoming is not None and upcoming.get("op") == "execute" and upcoming.get("sql") == "ROLLBACK":
                await self.execute("ROLLBACK")

    async def copy_from_table(self, *args: Any, **kwargs: Any) -> Any:
        raise _unrecorded_refusal("copy_from_table")

    async def copy_from_query(self, *args: Any, **kwargs: Any) -> Any:
        raise _unrecorded_refusal("copy_from_query")

    async def copy_to_table(self, *args: Any, **kwargs: Any) -> Any:
        raise _unrecorded_refusal("copy_to_table")

    async def copy_records_to_table(self, *args: Any, **kwargs: Any) -> Any:
        raise _unrecorded_refusal("copy_records_to_table")

    async def add_listener(self, *args: Any, **kwargs: Any) -> Any:
        raise _unrecorded_refusal("add_listener")

    async def close(self, *, timeout: Any = None) -> None:
        self._closed = True

    def terminate(self) -> None:
        self._closed = True

    def get_server_version(self) -> Any:
        return self._server_version

    async def __aenter__(self) -> ReplayedConnection:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


# calls whose traffic is not recorded (COPY, notifications): noted at capture, refused by name at replay
UNRECORDED = ("copy_from_table", "copy_from_query", "copy_to_table", "copy_records_to_table", "add_listener")


_UNRECORDED_WHY = "asyncpg's COPY and notifications go around the statements FluxRun records"


def _unrecorded_refusal(op: str) -> LiveIOBlocked:
    return refusal(f"asyncpg {op}", DRIVER, _UNRECORDED_WHY)


def _connect_data(conn: Any, target: str) -> dict[str, Any]:
    version = conn.get_server_version()
    return {
        "driver": DRIVER,
        "op": "connect",
        "target": target,
        "server_version": list(version) if version is not None else None,
    }


def _profile(scope: Scope | None, entry: CallEntry | None, conn: Any, target: str) -> None:
    try:
        data = _connect_data(conn, target)
    except Exception as exc:
        report_internal_error("asyncpg capture", exc)
        db.finish(entry)
        return
    if scope is None:
        db.opened(conn, data)
    else:
        db.connected(scope, entry, conn, data)


def _describe(conn: Any) -> Callable[[], dict[str, Any]]:
    """The connect data of a connection opened before FluxRun was installed."""
    return lambda: _connect_data(conn, "")


def _record(
    scope: Scope | None, conn: Any, op: str, sql: str | None, params: Any, **extra: Any
) -> tuple[CallEntry | None, Any]:
    """Start recording a call (into the execution, or the connection's setup); the token undoes `scope_var`."""
    data = {"driver": DRIVER, "op": op, "sql": sql, "params": params, **extra}
    if sql is None:
        del data["sql"]
    entry = db.begin(scope, conn, db.label(DRIVER, op, sql), data, _describe(conn))
    return entry, (scope_var.set(None) if entry is not None else None)


def _connect_patch(original: Callable[..., Any]) -> Callable[..., Any]:
    async def connect(dsn: Any = None, *args: Any, **kwargs: Any) -> Any:
        scope = current()
        if scope is not None and scope.session is not None:
            event = db.serve(scope, DRIVER, "connect")
            replayed = ReplayedConnection(event["data"])
            db.replayed(replayed, event)
            return replayed
        target = db.mask_dsn(dsn or "")
        extra = db.mask_kwargs(
            {k: v for k, v in kwargs.items() if k in ("host", "port", "user", "database", "password")}
        )
        if extra:
            target = (target + " " + " ".join(f"{k}={v}" for k, v in extra.items())).strip()
        if scope is None:
            conn = await original(dsn, *args, **kwargs)
            _profile(None, None, conn, target)
            return conn
        entry = db.start(scope, f"{DRIVER} connect {target}", {"driver": DRIVER, "op": "connect", "target": target})
        token = scope_var.set(None)
        try:
            conn = await original(dsn, *args, **kwargs)
        except BaseException as exc:
            scope_var.reset(token)
            db.fail(entry, exc)
            raise
        scope_var.reset(token)
        _profile(scope, entry, conn, target)
        return conn

    connect.__wrapped__ = original  # type: ignore[attr-defined]
    connect.__doc__ = original.__doc__
    return connect


def _replaying_a_live_connection() -> LiveIOBlocked:
    return LiveIOBlocked(
        "an asyncpg connection opened before the replay started was used inside it; FluxRun answers "
        "only connections opened during the execution"
    )


async def _recorded(
    entry: CallEntry | None,
    token: Any,
    call: Any,
    result: Callable[[Any], dict[str, Any] | None],
    scope: Scope | None,
) -> Any:
    """Run the real call with capture off, then complete the entry with what it returned (or raised), and its
    completion number in the execution (`scope`; None for a connection's setup)."""
    try:
        out = await call
    except BaseException as exc:
        scope_var.reset(token)
        db.fail(entry, exc)
        raise
    scope_var.reset(token)
    try:
        answer = result(out)
    except Exception:
        answer = None
    db.finish(entry, answer, scope)
    return out


def _method_patch(original: Callable[..., Any], op: str) -> Callable[..., Any]:
    async def method(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        scope = current()
        if scope is None and not db.setting_up:
            return await original(self, query, *args, **kwargs)
        if scope is not None and scope.session is not None:
            raise _replaying_a_live_connection()
        if op == "executemany" and args and not isinstance(args[0], (list, tuple)):
            args = (list(args[0]), *args[1:])
        entry, token = _record(scope, self, op, db.normalise_sql(query), _params(op, args))
        if entry is None:
            return await original(self, query, *args, **kwargs)
        return await _recorded(
            entry,
            token,
            original(self, query, *args, **kwargs),
            lambda out: _rows_result(op, out, db.row_limit()),
            scope,
        )

    return method


def _reset_patch(original: Callable[..., Any]) -> Callable[..., Any]:
    """`Connection.reset`, what a pool runs on a connection it takes back: one call, whatever it sends (a
    ROLLBACK, the server's reset query), answered as one by a replayed connection."""

    async def reset(self: Any, *, timeout: Any = None) -> Any:
        scope = current()
        if scope is None and not db.setting_up:
            return await original(self, timeout=timeout)
        if scope is not None and scope.session is not None:
            raise _replaying_a_live_connection()
        entry, token = _record(scope, self, "reset", None, None)
        if entry is None:
            return await original(self, timeout=timeout)
        return await _recorded(entry, token, original(self, timeout=timeout), lambda out: None, scope)

    return reset


def _prepare_patch(original: Callable[..., Any]) -> Callable[..., Any]:
    async def prepare(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        scope = current()
        if scope is None and not db.setting_up:
            return await original(self, query, *args, **kwargs)
        if scope is not None and scope.session is not None:
            raise _replaying_a_live_connection()
        entry, token = _record(scope, self, "prepare", db.normalise_sql(query), None)
        if entry is None:
            return await original(self, query, *args, **kwargs)
        return await _recorded(entry, token, original(self, query, *args, **kwargs), _prepare_result, scope)

    return prepare


def _statement_patch(original: Callable[..., Any], op: str) -> Callable[..., Any]:
    """An execution of a prepared statement: recorded with the statement's SQL, status and attributes."""

    async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        scope = current()
        if scope is None and not db.setting_up:
            return await original(self, *args, **kwargs)
        if scope is not None and scope.session is not None:
            raise _replaying_a_live_connection()
        if op == "executemany" and args and not isinstance(args[0], (list, tuple)):
            args = (list(args[0]), *args[1:])
        conn = self._connection
        entry, token = _record(
            scope,
            conn,
            op,
            db.normalise_sql(self._query),
            _params(op, args),
            prepared=True,
            attributes=_attributes(self),
        )
        if entry is None:
            return await original(self, *args, **kwargs)

        def result(out: Any) -> dict[str, Any]:
            return {**_rows_result(op, out, db.row_limit()), "status": self.get_statusmsg()}

        return await _recorded(entry, token, original(self, *args, **kwargs), result, scope)

    return method


def _cursor_patch(original: Callable[..., Any], op: str) -> Callable[..., Any]:
    """A cursor's round trip (`BaseCursor._bind_exec`, `_bind`, `_exec`, `Cursor.forward`): recorded as a call
    with the cursor's query and arguments, the rows it returned (or how far it moved), and whether the portal
    was then exhausted."""

    async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        scope = current()
        if scope is None and not db.setting_up:
            return await original(self, *args, **kwargs)
        if scope is not None and scope.session is not None:
            raise _replaying_a_live_connection()
        entry, token = _record(scope, self._connection, op, db.normalise_sql(self._query), _params("fetch", self._args))
        if entry is None:
            return await original(self, *args, **kwargs)

        def result(out: Any) -> dict[str, Any]:
            if op == "cursor_forward":
                return {"advanced": int(out), "exhausted": bool(self._exhausted)}
            records = list(out) if out is not None else []
            return {**_rows_result("fetch", records, db.row_limit()), "exhausted": bool(self._exhausted)}

        return await _recorded(entry, token, original(self, *args, **kwargs), result, scope)

    return method


def _codec_patch(original: Callable[..., Any]) -> Callable[..., Any]:
    """`set_type_codec` looks the type up on the server (SQLAlchemy's on_connect sets json and jsonb)."""

    async def set_type_codec(self: Any, typename: str, *args: Any, **kwargs: Any) -> Any:
        scope = current()
        if scope is None and not db.setting_up:
            return await original(self, typename, *args, **kwargs)
        if scope is not None and scope.session is not None:
            raise _replaying_a_live_connection()
        params = db.encode_params([typename, kwargs.get("schema", "public"), kwargs.get("format", "text")])
        entry, token = _record(scope, self, "set_type_codec", None, params)
        if entry is None:
            return await original(self, typename, *args, **kwargs)
        return await _recorded(entry, token, original(self, typename, *args, **kwargs), lambda out: None, scope)

    return set_type_codec


def _transaction_patch(original: Callable[..., Any], op: str) -> Callable[..., Any]:
    async def call(self: Any) -> Any:
        scope = current()
        if scope is None and not db.setting_up:
            return await original(self)
        if scope is not None and scope.session is not None:
            raise LiveIOBlocked("an asyncpg transaction on a connection opened before the replay started")
        entry, token = _record(scope, self._connection, op, None, None)
        if entry is None:
            return await original(self)
        return await _recorded(entry, token, original(self), lambda out: None, scope)

    return call


class AsyncpgInterceptor:
    kind = db.KIND

    def __init__(self) -> None:
        self.asyncpg = loaded("asyncpg")

    def patches(self) -> list[Patch]:
        asyncpg = self.asyncpg
        if asyncpg is None:
            return []
        from asyncpg import connection, prepared_stmt, transaction

        connect = _connect_patch(connection.connect)
        patches = [Patch(asyncpg, "connect", connect), Patch(connection, "connect", connect)]
        for op in ("execute", "executemany", "fetch", "fetchrow", "fetchval"):
            patches.append(Patch(connection.Connection, op, _method_patch(vars(connection.Connection)[op], op)))
        patches.append(Patch(connection.Connection, "prepare", _prepare_patch(vars(connection.Connection)["prepare"])))
        if "reset" in vars(connection.Connection):
            patches.append(Patch(connection.Connection, "reset", _reset_patch(vars(connection.Connection)["reset"])))
        patches.append(
            Patch(connection.Connection, "set_type_codec", _codec_patch(vars(connection.Connection)["set_type_codec"]))
        )
        for op in UNRECORDED:
            if op in vars(connection.Connection):
                method = unrecorded_method(vars(connection.Connection)[op], f"asyncpg {op}", DRIVER, _UNRECORDED_WHY)
                patches.append(Patch(connection.Connection, op, method))
        statement = prepared_stmt.PreparedStatement
        for op in ("fetch", "fetchrow", "fetchval", "executemany"):
            patches.append(Patch(statement, op, _statement_patch(vars(statement)[op], op)))
        from asyncpg import cursor

        for owner, name, op in (
            (cursor.BaseCursor, "_bind_exec", "cursor"),
            (cursor.BaseCursor, "_bind", "cursor"),
            (cursor.BaseCursor, "_exec", "cursor_fetch"),
            (cursor.Cursor, "forward", "cursor_forward"),
        ):
            patches.append(Patch(owner, name, _cursor_patch(vars(owner)[name], op)))
        for name, op in _TRANSACTION_OPS.items():
            patches.append(
                Patch(transaction.Transaction, name, _transaction_patch(vars(transaction.Transaction)[name], op))
            )
        return patches

    def rebind(self) -> dict[int, Any]:
        return {}
