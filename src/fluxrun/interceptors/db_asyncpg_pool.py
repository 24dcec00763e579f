"""asyncpg's pool: the connection a request acquires, recorded and answered through asyncpg's own.

`create_pool` connects in the app's start-up, outside any execution. At capture the connection a request
acquires is recorded as any connection opened before the execution (its connect event first, `opened`
"before"), then its statements, the pool's `setup` callback's and the `reset` the pool runs when it takes the
connection back (db_asyncpg.py records `Connection.reset` as one call).

At replay nothing connects: a pool created during a replay makes its holders without connecting them (nor
refilling them to `min_size`), and `acquire` inside the replayed execution opens a replayed connection
answered from the recording in place of one from the pool (the pool's `setup` runs on it); `release` resets it
as the pool does, in a task of its own, and closes it.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

from fluxrun._context import current
from fluxrun._replay_mode import replaying_here
from fluxrun.interceptors.base import Patch, loaded, skipped_while_replaying

__all__ = ["AsyncpgPoolInterceptor"]

KIND = "db"

# the replayed connections `_acquire` handed out, until `release` takes them back
_handed_out: weakref.WeakSet[Any] = weakref.WeakSet()


def _acquire(original: Callable[..., Any], connection: Any) -> Callable[..., Any]:
    async def acquire(self: Any, timeout: Any) -> Any:
        scope = current()
        if scope is None or scope.session is None:
            return await original(self, timeout)
        conn = await connection.connect(*self._connect_args, **self._connect_kwargs)  # the recorded connect
        setup = getattr(self, "_setup", None)
        if setup is not None:
            await setup(conn)
        _handed_out.add(conn)
        return conn

    return acquire


def _release(original: Callable[..., Any]) -> Callable[..., Any]:
    async def release(self: Any, connection: Any, *, timeout: Any = None) -> None:
        if connection not in _handed_out:
            return await original(self, connection, timeout=timeout)  # type: ignore[no-any-return]
        _handed_out.discard(connection)
        reset = getattr(self, "_reset", None)

        async def reset_and_close() -> None:
            if reset is not None:  # the pool's own reset callable, after asyncpg's rollback of an open transaction
                await connection._reset()
                await reset(connection)
            else:
                await connection.reset()
            await connection.close()

        await asyncio.shield(reset_and_close())  # in a task of its own, as asyncpg's release resets (and recorded)
        return None

    return release


def _initialize(original: Callable[..., Any]) -> Callable[..., Any]:
    async def initialize(self: Any) -> None:
        if not replaying_here():
            return await original(self)  # type: ignore[no-any-return]
        # the pool's holders, made as the pool makes them, none connected: a replay's come from the recording
        sizes = {name: getattr(self, name) for name in ("_initsize", "_minsize") if hasattr(self, name)}
        for name in sizes:
            setattr(self, name, 0)
        try:
            return await original(self)  # type: ignore[no-any-return]
        finally:
            for name, size in sizes.items():
                setattr(self, name, size)

    return initialize


class AsyncpgPoolInterceptor:
    kind = KIND

    def __init__(self) -> None:
        self.module = loaded("asyncpg.pool")
        self.modules = ("asyncpg",) if self.module is not None else ()

    def patches(self) -> list[Patch]:
        pool_module = self.module
        pool = getattr(pool_module, "Pool", None)
        own = vars(pool) if isinstance(pool, type) else {}
        if not all(name in own for name in ("_acquire", "release", "_initialize")):
            return []  # an asyncpg whose pool looks different: left alone
        from asyncpg import connection  # type: ignore[import-untyped]

        patches = [
            Patch(pool, "_acquire", _acquire(own["_acquire"], connection)),
            Patch(pool, "release", _release(own["release"])),
            Patch(pool, "_initialize", _initialize(own["_initialize"])),
        ]
        if "_schedule_min_size_maintenance" in own:  # asyncpg 0.32 refills the pool to min_size in a task
            maintenance = skipped_while_replaying(own["_schedule_min_size_maintenance"])
            patches.append(Patch(pool, "_schedule_min_size_maintenance", maintenance))
        return patches

    def rebind(self) -> dict[int, Any]:
        return {}
