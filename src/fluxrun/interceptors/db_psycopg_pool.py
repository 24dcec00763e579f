"""psycopg_pool: the connection a request takes from a pool, recorded and answered through psycopg's own.

A pool opens its connections in its own threads or tasks, outside any execution. At capture the connection a
request takes (`getconn`, under `connection()`) is recorded as any connection opened before the execution: its
connect event first (`opened`: "before"), then its statements (db_psycopg.py), a `check` callback's included.

At replay nothing connects. A pool opened during a replay starts no connection attempts and `wait` (and
`open(wait=True)`; a null pool's, which opens a connection to test the server) returns at once: there is no
server to fill it from. Inside the replayed execution `getconn`
opens a replayed connection answered from the recording in place of one from the pool, runs the pool's `check`
on it as the pool does, and `putconn` resets it where the pool resets it in the request (a rollback of a
connection returned inside a transaction, recorded at capture), then closes it. Pools without connections of
their own (`NullConnectionPool`) connect inside the request at capture already, and keep their own code.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from fluxrun._context import current
from fluxrun.interceptors.base import Patch, loaded, skipped_while_replaying

__all__ = ["PsycopgPoolInterceptor"]

KIND = "db"

# the replayed connections `getconn` handed out, until `putconn` takes them back
_handed_out: weakref.WeakSet[Any] = weakref.WeakSet()


def _replaying(pool: Any, null_pools: tuple[type, ...]) -> bool:
    scope = current()
    return scope is not None and scope.session is not None and not isinstance(pool, null_pools)


def _connect_arguments(pool: Any) -> tuple[Any, dict[str, Any]]:
    """The conninfo and keyword arguments the pool connects with, as the pool's own `_connect` takes them
    (psycopg_pool 3.3 also takes callables; 3.1 and 3.2 plain values)."""
    conninfo = pool.conninfo() if callable(pool.conninfo) else pool.conninfo or ""
    kwargs = pool.kwargs() if callable(pool.kwargs) else pool.kwargs or {}
    return conninfo, dict(kwargs)


def _getconn(original: Callable[..., Any], null_pools: tuple[type, ...]) -> Callable[..., Any]:
    def getconn(self: Any, timeout: float | None = None) -> Any:
        if not _replaying(self, null_pools):
            return original(self, timeout)
        conninfo, kwargs = _connect_arguments(self)
        conn = self.connection_class.connect(conninfo, **kwargs)  # answered by the recorded connect
        conn._pool = self  # as the pool marks the ones it hands out: `with conn` leaves it open
        check = getattr(self, "_check_connection", None)
        if check is not None:
            check(conn)
        _handed_out.add(conn)
        return conn

    return getconn


def _agetconn(original: Callable[..., Any], null_pools: tuple[type, ...]) -> Callable[..., Any]:
    async def getconn(self: Any, timeout: float | None = None) -> Any:
        if not _replaying(self, null_pools):
            return await original(self, timeout)
        if callable(self.conninfo) or callable(self.kwargs):  # psycopg_pool 3.3: sync or async callables
            conninfo, kwargs = await self._resolve_conninfo(), dict(await self._resolve_kwargs())
        else:
            conninfo, kwargs = _connect_arguments(self)
        conn = await self.connection_class.connect(conninfo, **kwargs)
        conn._pool = self
        check = getattr(self, "_check_connection", None)
        if check is not None:
            await check(conn)
        _handed_out.add(conn)
        return conn

    return getconn


def _putconn(original: Callable[..., Any]) -> Callable[..., Any]:
    def putconn(self: Any, conn: Any) -> None:
        if conn not in _handed_out:
            return original(self, conn)  # type: ignore[no-any-return]
        _handed_out.discard(conn)
        if not self._reset:  # with a reset callback the pool resets it in a worker, outside the request
            self._reset_connection(conn)
        conn._pool = None
        conn.close()
        return None

    return putconn


def _aputconn(original: Callable[..., Any]) -> Callable[..., Any]:
    async def putconn(self: Any, conn: Any) -> None:
        if conn not in _handed_out:
            return await original(self, conn)  # type: ignore[no-any-return]
        _handed_out.discard(conn)
        if not self._reset:
            await self._reset_connection(conn)
        conn._pool = None
        await conn.close()
        return None

    return putconn


class PsycopgPoolInterceptor:
    kind = KIND

    def __init__(self) -> None:
        self.module = loaded("psycopg_pool")
        self.modules = ("psycopg_pool",) if self.module is not None else ()

    def patches(self) -> list[Patch]:
        pool_module = self.module
        if pool_module is None:
            return []
        null_pools = tuple(
            cls
            for name in ("NullConnectionPool", "AsyncNullConnectionPool")
            if isinstance(cls := getattr(pool_module, name, None), type)
        )
        patches: list[Patch] = []
        for name, getconn, putconn in (
            ("ConnectionPool", _getconn, _putconn),
            ("AsyncConnectionPool", _agetconn, _aputconn),
        ):
            cls = getattr(pool_module, name, None)
            if isinstance(cls, type) and "getconn" in vars(cls) and "putconn" in vars(cls):
                patches.append(Patch(cls, "getconn", getconn(vars(cls)["getconn"], null_pools)))
                patches.append(Patch(cls, "putconn", putconn(vars(cls)["putconn"])))
        # at replay a pool neither connects nor waits for connections (a null pool's `wait` connects to test
        # the server): its connections come from the recording
        for name in ("ConnectionPool", "AsyncConnectionPool", "NullConnectionPool", "AsyncNullConnectionPool"):
            cls = getattr(pool_module, name, None)
            own = vars(cls) if isinstance(cls, type) else {}
            for method in ("wait", "_start_initial_tasks"):
                if method in own:
                    patches.append(Patch(cls, method, skipped_while_replaying(own[method])))
        return patches

    def rebind(self) -> dict[int, Any]:
        return {}
