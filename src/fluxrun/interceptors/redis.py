"""Redis commands through redis-py, sync and asyncio: recorded at capture, answered at replay.

Every command method (`get`, `set`, `hgetall`, ...) ends in `Redis.execute_command`, and a pipeline ends in
`Pipeline.execute`, so one patch per class sees them all. A command is recorded as its arguments (the name
first; bytes stay bytes) and its parsed reply, or the redis exception it raised. A pipeline is ONE call
holding its commands in order, and its reply list. Commands issued while a pipeline WATCHes keys
(`immediate_execute_command`) are commands of their own.

At replay the patches answer before the client touches its connection pool, so no connection is made;
a command matches a recorded one by its arguments, in order, within the task that made it, and a
different command raises `ReplayDivergence` showing both. A recorded error is raised again as the same
redis exception class. This module is also the worked example of docs/interceptors.md.

A `single_connection_client=True` client connects while it is built (sync) or when it is initialised (`async
with`, `await client`): at replay it is built or initialised without that connection, since every command it
sends is answered first. `RedisCluster` routes its commands around `Redis.execute_command`: redis_cluster.py
intercepts it with these wrappers, in the same events. Not intercepted: pub/sub and the monitor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fluxrun.interceptors.api import (
    Patch,
    active,
    answer,
    decode,
    encode,
    fields_match,
    loaded,
    record,
    record_async,
    replaying,
)
from fluxrun.interceptors.base import wrap_client_method, wrap_method

__all__ = ["RedisInterceptor"]

KIND = "redis"
CLIENT = "redis-py"


def _name(args: tuple[Any, ...]) -> str:
    """The command name, for labels: `SET`, `CLIENT SETNAME` (never its arguments: keys can be secrets)."""
    if not args:
        return "?"
    first = args[0]
    if isinstance(first, (bytes, bytearray, memoryview)):
        first = bytes(first).decode("latin-1")
    return str(first).upper()[:40]


def _call(args: tuple[Any, ...]) -> str:
    """The call's label, `redis GET`: made once per command name (an app sends a few names over and over)."""
    first = args[0] if args else None
    if type(first) is not str:
        return f"redis {_name(args)}"
    label = _labels.get(first)
    if label is None:
        if len(_labels) >= _LABELS_KEPT:
            _labels.clear()
        label = _labels[first] = f"redis {_name(args)}"
    return label


_labels: dict[str, str] = {}
_LABELS_KEPT = 512


def _command(args: tuple[Any, ...]) -> Any:
    """A command's arguments as recorded: bytes stay bytes, memoryviews become bytes. Arguments that are all
    text short enough to be kept whole (GET, HGET, DEL, ...: most commands) are what `encode` would return
    unchanged: checked in C and copied, without a Python loop over them."""
    if _TEXT.issuperset(map(type, args)) and sum(map(len, args)) <= _SHORT:
        return list(args)
    return encode([bytes(a) if isinstance(a, (bytearray, memoryview)) else a for a in args])


_TEXT = frozenset({str})
_SHORT = 1 << 16  # characters in all: well under the length past which `encode` truncates one string (1 MiB)


def _command_data(args: tuple[Any, ...]) -> dict[str, Any]:
    return {"client": CLIENT, "command": _command(args)}


def _pipeline_data(pipeline: Any) -> tuple[str, dict[str, Any]]:
    # redis.asyncio keeps it in `is_transaction` (its `transaction` is the Redis.transaction method)
    flag = getattr(pipeline, "is_transaction", None)
    transaction = bool((pipeline.transaction if flag is None else flag) or pipeline.explicit_transaction)
    return _batch_data([args for args, _options in pipeline.command_stack], transaction)


def _batch_data(stack: list[Any], transaction: bool) -> tuple[str, dict[str, Any]]:
    """A pipeline's label (`redis PIPELINE [SET GET]`, `redis MULTI/EXEC [...]`) and data: the arguments of its
    commands in order, and whether they ran as one MULTI/EXEC (a cluster pipeline's too: redis_cluster.py)."""
    commands = [_command(tuple(args)) for args in stack]
    names = " ".join(_name(tuple(args)) for args in stack[:8])
    more = " …" if len(stack) > 8 else ""
    call = f"redis {'MULTI/EXEC' if transaction else 'PIPELINE'} [{names}{more}]"
    return call, {"client": CLIENT, "pipeline": commands, "transaction": transaction}


def _served_command(scope: Any, instance: Any, call: str, data: dict[str, Any], args: tuple[Any, ...]) -> Any:
    event = answer(scope, KIND, call, fields_match(data, ["command"]))
    unwatch = getattr(instance, "UNWATCH_COMMANDS", None)  # a pipeline's WATCH state, as its parse_response keeps it
    if unwatch is not None:
        name = _name(args)
        if name in unwatch:
            instance.watching = False
        elif name == "WATCH":
            instance.watching = True
    return decode(event["data"].get("result"))


def _command_wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    scope = active()
    if scope is None:
        return wrapped(*args, **kwargs)
    call, data = _call(args), _command_data(args)
    if replaying(scope):
        return _served_command(scope, instance, call, data, args)
    return record(scope, KIND, call, data, lambda: wrapped(*args, **kwargs))


def _async_command_wrapper(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    scope = active()
    if scope is None:
        return wrapped(*args, **kwargs)
    call, data = _call(args), _command_data(args)
    if replaying(scope):

        async def replay() -> Any:
            return _served_command(scope, instance, call, data, args)

        return replay()
    return record_async(scope, KIND, call, data, lambda: wrapped(*args, **kwargs))


def _served_batch(scope: Any, call: str, data: dict[str, Any]) -> Any:
    """A pipeline's recorded reply list: the recorded pipeline with the same commands, in order."""
    event = answer(scope, KIND, call, fields_match(data, ["pipeline", "transaction"]))
    return decode(event["data"].get("result"))


Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]


def pipeline_wrappers(data_of: Callable[[Any], tuple[str, dict[str, Any]]]) -> tuple[Wrapper, Wrapper]:
    """The wrappers of a pipeline's `execute`, sync and asyncio: one call holding its commands, `data_of(pipeline)`
    its label and data (`_pipeline_data`; a cluster pipeline's in redis_cluster.py). At replay the recorded reply
    list, and the pipeline reset as redis-py's own execute does, also when EXEC raised (a WatchError, then a
    retry)."""

    def sync_wrapper(wrapped: Callable[..., Any], pipeline: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        scope = active()
        if scope is None:
            return wrapped(*args, **kwargs)
        if replaying(scope):
            try:
                return _served_batch(scope, *data_of(pipeline))
            finally:
                pipeline.reset()
        call, data = data_of(pipeline)
        return record(scope, KIND, call, data, lambda: wrapped(*args, **kwargs))

    def async_wrapper(wrapped: Callable[..., Any], pipeline: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        scope = active()
        if scope is None:
            return wrapped(*args, **kwargs)
        if replaying(scope):

            async def replay() -> Any:
                try:
                    return _served_batch(scope, *data_of(pipeline))
                finally:
                    await pipeline.reset()

            return replay()
        call, data = data_of(pipeline)
        return record_async(scope, KIND, call, data, lambda: wrapped(*args, **kwargs))

    return sync_wrapper, async_wrapper


_pipeline_wrapper, _async_pipeline_wrapper = pipeline_wrappers(_pipeline_data)


def _init_wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """`Redis.__init__`: a single-connection client built during a replay takes no connection from its pool."""
    scope = active()
    if scope is None or not replaying(scope) or not kwargs.get("single_connection_client"):
        return wrapped(*args, **kwargs)
    wrapped(*args, **{**kwargs, "single_connection_client": False})
    flag = "_single_connection_client" if hasattr(instance, "_single_connection_client") else "single_connection_client"
    setattr(instance, flag, True)  # as the app asked; `connection` stays None, and `close` has none to give back
    return None


def _initialize_wrapper(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """`redis.asyncio.Redis.initialize` (`async with client`, `await client`): no connection during a replay."""
    scope = active()
    if scope is None or not replaying(scope):
        return wrapped(*args, **kwargs)

    async def initialized() -> Any:
        return instance

    return initialized()


class RedisInterceptor:
    """redis-py's `Redis` and `Pipeline`, sync (`redis.client`) and asyncio (`redis.asyncio.client`)."""

    kind = KIND

    def patches(self) -> list[Patch]:
        sync, aio = loaded("redis.client"), loaded("redis.asyncio.client")
        patches: list[Patch] = []
        if sync is not None:
            patches += [
                Patch(sync.Redis, "execute_command", _wrap(sync.Redis, "execute_command", _command_wrapper)),
                Patch(sync.Pipeline, "execute", _wrap(sync.Pipeline, "execute", _pipeline_wrapper)),
                Patch(
                    sync.Pipeline,
                    "immediate_execute_command",
                    _wrap(sync.Pipeline, "immediate_execute_command", _command_wrapper),
                ),
                Patch(sync.Redis, "__init__", wrap_method(vars(sync.Redis)["__init__"], _init_wrapper)),
            ]
        if aio is not None:
            patches += [
                Patch(aio.Redis, "execute_command", _wrap(aio.Redis, "execute_command", _async_command_wrapper)),
                Patch(aio.Pipeline, "execute", _wrap(aio.Pipeline, "execute", _async_pipeline_wrapper)),
                Patch(
                    aio.Pipeline,
                    "immediate_execute_command",
                    _wrap(aio.Pipeline, "immediate_execute_command", _async_command_wrapper),
                ),
                Patch(aio.Redis, "initialize", _wrap(aio.Redis, "initialize", _initialize_wrapper)),
            ]
        return patches

    def rebind(self) -> dict[int, Any]:
        return {}


def _wrap(owner: type, name: str, wrapper: Callable[..., Any]) -> Any:
    return wrap_client_method(vars(owner)[name], wrapper)
