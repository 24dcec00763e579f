"""Redis Cluster commands through redis-py's `RedisCluster`, sync and asyncio: recorded at capture, answered at
replay, as redis.py records and answers a `Redis` command.

A cluster client routes each command itself: `RedisCluster.execute_command` finds the node that serves the key's
slot and sends the command on that node's connection (`_execute_command`), never through `Redis.execute_command`.
So `RedisCluster.execute_command` gets redis.py's own wrappers, and a command is recorded ONCE, in the same event
(kind "redis", its arguments and parsed reply or redis error, the label `redis GET`), whatever MOVED or ASK
redirections, retries and topology refreshes it went through. A `ClusterPipeline.execute` is one call holding its
commands in order and its reply list, batched per node or, with `transaction=True`, one MULTI/EXEC; what a
transactional pipeline sends at once while it WATCHes keys is a command of its own. redis-py sends `delete`,
`exists`, `touch`, `unlink` and the `*_nonatomic` commands as a pipeline of one command per slot, and that
pipeline is what is recorded.

What the client does to learn the cluster is not the app's IO and is never recorded: `CLUSTER SLOTS` (through a
node's plain `Redis` client) and `COMMAND` when it is built (sync) or initialised (asyncio), and the slot lookup
of a transaction's commands (`COMMAND GETKEYS` for some). At capture they run with the capture suspended; while a
replay runs in this process they are skipped, so a client built at import, in a lifespan or in the request never
connects. It knows no node then, and every command and pipeline is answered from the recording before the client
would route it; a transaction's commands are queued or sent as redis-py decides, without their slot. `close()` and
`aclose()` find no connection to close.

Not recorded: pub/sub (`ClusterPubSub`, sharded channels too), noted at capture so the bundle says it is not
replay-ready, and refused by name at replay. A failed discovery while the client is built or initialised, and the
routing errors redis-py raises while it queues a transaction's command, before anything is sent (keys of two
slots, a command without a key), are not raised at replay, where nothing is discovered and no slot computed: the
replay then diverges at the next call.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from fluxrun._context import Scope, scope_var
from fluxrun._replay_mode import replaying_here
from fluxrun.interceptors.api import (
    Patch,
    active,
    answer,
    decode,
    fields_match,
    loaded,
    record,
    record_async,
    replaying,
)
from fluxrun.interceptors.base import wrap_client_method, wrap_method
from fluxrun.interceptors.redis import (
    KIND,
    Wrapper,
    _async_command_wrapper,
    _batch_data,
    _call,
    _command_data,
    _command_wrapper,
    _name,
    pipeline_wrappers,
)
from fluxrun.interceptors.unrecorded import refuse_or_note

__all__ = ["RedisClusterInterceptor"]


# -- pipelines ---------------------------------------------------------------------------------------------------
def _pipeline_data(pipeline: Any) -> tuple[str, dict[str, Any]]:
    strategy = pipeline._execution_strategy
    transaction = hasattr(strategy, "_explicit_transaction")  # kept by a TransactionStrategy (`transaction=True`) only
    return _batch_data([command.args for command in strategy._command_queue], transaction)


_pipeline_wrapper, _async_pipeline_wrapper = pipeline_wrappers(_pipeline_data)


def _by_slot_wrapper(wrapped: Callable[..., Any], client: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """`_execute_pipeline_by_slot(command, slots_to_args)`, behind `delete`, `exists`, `mget_nonatomic`...: at replay
    the same pipeline of one command per slot, without the node of each slot (a replayed client knows none)."""
    scope = active()
    if scope is None or not replaying(scope):
        return wrapped(*args, **kwargs)
    command, slots_to_args = args  # `wrap_client_method` hands every positional parameter over in `args`
    pipe = client.pipeline()
    for slot_args in slots_to_args.values():
        pipe.execute_command(command, *slot_args)
    return pipe.execute()  # answered by `_pipeline_wrapper`, or a coroutine of `_async_pipeline_wrapper`'s


# -- transactions ------------------------------------------------------------------------------------------------
def _served_immediate(scope: Scope, strategy: Any, call: str, data: dict[str, Any], args: tuple[Any, ...]) -> Any:
    event = answer(scope, KIND, call, fields_match(data, ["command"]))
    if args[0] == "WATCH":  # the WATCH state redis-py's `_send_command_parse_response` keeps once a reply is read
        strategy._watch_acknowledged = True
    elif args[0] in strategy.UNWATCH_COMMANDS:
        strategy._watching = strategy._watch_acknowledged = False
    return decode(event["data"].get("result"))


def _immediate_wrapper(
    wrapped: Callable[..., Any], strategy: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """`TransactionStrategy._immediate_execute_command` (sync): WATCH, UNWATCH, and the commands sent between WATCH
    and MULTI, each a command of its own."""
    scope = active()
    assert scope is not None  # `wrap_method` calls straight through outside an execution
    call, data = _call(args), _command_data(args)
    if replaying(scope):
        return _served_immediate(scope, strategy, call, data, args)
    return record(scope, KIND, call, data, lambda: wrapped(*args, **kwargs))


def _async_immediate(original: Callable[..., Any]) -> Callable[..., Any]:
    """`TransactionStrategy._immediate_execute_command` (asyncio). redis-py calls it on a private loop in a thread
    of its own (`execute_command`) and hands the coroutine back for the app to await: what it does is decided when
    it is awaited, in the app's context."""

    @functools.wraps(original)
    async def immediate(self: Any, *args: Any, **options: Any) -> Any:
        scope = active()
        if scope is None:
            return await original(self, *args, **options)
        call, data = _call(args), _command_data(args)
        if replaying(scope):
            return _served_immediate(scope, self, call, data, args)
        return await record_async(scope, KIND, call, data, lambda: original(self, *args, **options))

    return immediate


def _transaction_command(queue: Callable[..., Any], *, suspend: bool) -> Wrapper:
    """`TransactionStrategy.execute_command`. Outside a replay the original runs (`suspend`: with the capture
    suspended, for the asyncio one's slot lookup in redis-py's thread). At replay, what redis-py decides without
    the slot lookup, which needs the topology a replayed client never learns: while WATCHing (and for WATCH and
    UNWATCH) the command is sent at once and answered, else `queue` stages it for the MULTI/EXEC."""

    def wrapper(wrapped: Callable[..., Any], strategy: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        scope = active()
        assert scope is not None  # `wrap_method` calls straight through outside an execution
        if not replaying(scope):
            if not suspend:
                return wrapped(*args, **kwargs)
            token = scope_var.set(None)
            try:
                return wrapped(*args, **kwargs)
            finally:
                scope_var.reset(token)
        immediate = strategy._watching or args[0] in strategy.IMMEDIATE_EXECUTE_COMMANDS
        if immediate and not strategy._explicit_transaction:
            if args[0] == "WATCH":
                strategy._validate_watch()
            return strategy._immediate_execute_command(*args, **kwargs)
        return queue(strategy, *args, **kwargs)

    return wrapper


# -- topology ----------------------------------------------------------------------------------------------------
def _replay_here(scope: Scope | None) -> bool:
    """A replay is running: this execution's, or (outside any execution: an import, a lifespan) one in this process."""
    return replaying_here() if scope is None else replaying(scope)


def _topology(original: Callable[..., Any], skipped: Callable[[Any], Any] = lambda self: None) -> Callable[..., Any]:
    """`original`, a step of learning the cluster (`CLUSTER SLOTS`, `COMMAND`): no call of the app's, so never
    recorded (at capture it runs with the capture suspended), and skipped while a replay runs in this process,
    where nothing may connect: `skipped(self)` is returned instead."""
    if inspect.iscoroutinefunction(original):

        @functools.wraps(original)
        async def learn_async(self: Any, *args: Any, **kwargs: Any) -> Any:
            scope = active()
            if scope is None and not replaying_here():
                return await original(self, *args, **kwargs)
            if _replay_here(scope):
                return skipped(self)
            token = scope_var.set(None)
            try:
                return await original(self, *args, **kwargs)
            finally:
                scope_var.reset(token)

        return learn_async

    @functools.wraps(original)
    def learn(self: Any, *args: Any, **kwargs: Any) -> Any:
        scope = active()
        if scope is None and not replaying_here():
            return original(self, *args, **kwargs)
        if _replay_here(scope):
            return skipped(self)
        token = scope_var.set(None)
        try:
            return original(self, *args, **kwargs)
        finally:
            scope_var.reset(token)

    return learn


LOOPBACK = "127.0.0.1"


def _localhost(original: Callable[[], str]) -> Callable[[], str]:
    """`_resolve_localhost()`: the address a node given as `localhost` is named by, from a lookup (`gethostbyname`,
    which a replay blocks). At replay a node's name routes nothing, so it is the loopback address, unlooked-up."""

    @functools.wraps(original)
    def resolve() -> str:
        return LOOPBACK if _replay_here(active()) else original()

    return resolve


def _suspended(original: Callable[..., Any]) -> Callable[..., Any]:
    """`original` (the sync transaction's slot lookup: `COMMAND GETKEYS` through a node's `Redis` for some commands)
    with the capture suspended: the client's own IO, not the app's."""

    @functools.wraps(original)
    def suspended(self: Any, *args: Any, **kwargs: Any) -> Any:
        scope = active()
        if scope is None or replaying(scope):
            return original(self, *args, **kwargs)
        token = scope_var.set(None)
        try:
            return original(self, *args, **kwargs)
        finally:
            scope_var.reset(token)

    return suspended


# -- pub/sub -----------------------------------------------------------------------------------------------------
PUBSUB = "redis cluster pub/sub"
PUBSUB_WHY = "its messages come when the server pushes them, not as the answer to a call"


def _pubsub(command: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A `ClusterPubSub` method that subscribes or sends (sync or asyncio), the `command` it sends (default: its
    first argument): noted at capture, so the bundle says it is not replay-ready, and refused by name at replay,
    where a client that knows no node would fail with a routing error of redis-py's."""

    def patch(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def pubsub(self: Any, *args: Any, **kwargs: Any) -> Any:
            refuse_or_note(PUBSUB, command or _name(args), PUBSUB_WHY)
            return original(self, *args, **kwargs)

        return pubsub

    return patch


class RedisClusterInterceptor:
    """redis-py's `RedisCluster` and `ClusterPipeline`, sync (`redis.cluster`) and asyncio (`redis.asyncio.cluster`)."""

    kind = KIND

    def patches(self) -> list[Patch]:
        sync, aio = loaded("redis.cluster"), loaded("redis.asyncio.cluster")
        parsers = loaded("redis._parsers.commands")
        made: list[tuple[Any, str, Callable[[Any], Any]]] = []  # (owner, attribute, replacement of its original)
        if sync is not None:
            made += [
                (sync.RedisCluster, "execute_command", _client_method(_command_wrapper)),
                (sync.RedisCluster, "_execute_pipeline_by_slot", _client_method(_by_slot_wrapper)),
                (sync.ClusterPipeline, "execute", _client_method(_pipeline_wrapper)),
                (sync.NodesManager, "initialize", _topology),
                (sync, "_resolve_localhost", _localhost),
                (sync.ClusterPubSub, "execute_command", _pubsub()),
                (sync.ClusterPubSub, "ssubscribe", _pubsub("SSUBSCRIBE")),
                *_transactions(sync, "pipeline_execute_command", _method(_immediate_wrapper), asynchronous=False),
            ]
        if parsers is not None:
            made.append((parsers.CommandsParser, "initialize", _topology))
        if aio is not None:
            made += [
                (aio.RedisCluster, "execute_command", _client_method(_async_command_wrapper)),
                (aio.RedisCluster, "_execute_pipeline_by_slot", _client_method(_by_slot_wrapper)),
                (aio.ClusterPipeline, "execute", _client_method(_async_pipeline_wrapper)),
                (aio.RedisCluster, "initialize", functools.partial(_topology, skipped=lambda client: client)),
                (aio, "_resolve_localhost", _localhost),  # imported by name from redis.cluster
                (aio.ClusterPubSub, "execute_command", _pubsub()),
                (aio.ClusterPubSub, "ssubscribe", _pubsub("SSUBSCRIBE")),
                *_transactions(aio, "execute_command", _async_immediate, asynchronous=True),
            ]
        # a redis-py without one of these (another major version) keeps it as it is
        return [Patch(owner, name, make(getattr(owner, name))) for owner, name, make in made if hasattr(owner, name)]

    def rebind(self) -> dict[int, Any]:
        return {}


def _transactions(
    module: Any, queue: str, immediate: Callable[[Any], Any], *, asynchronous: bool
) -> list[tuple[Any, str, Callable[[Any], Any]]]:
    """The patches of a transactional cluster pipeline's `TransactionStrategy` (none without one): `queue` names the
    method of its base class that stages a command."""
    strategy, base = getattr(module, "TransactionStrategy", None), getattr(module, "AbstractStrategy", None)
    staging = getattr(base, queue, None)
    if strategy is None or staging is None:
        return []
    made = [
        (strategy, "execute_command", _method(_transaction_command(staging, suspend=asynchronous))),
        (strategy, "_immediate_execute_command", immediate),
    ]
    if not asynchronous:  # the asyncio slot lookup runs inside `execute_command`, suspended with it
        made.append((strategy, "_resolve_transaction_slot", _suspended))
    return made


def _client_method(wrapper: Wrapper) -> Callable[[Any], Any]:
    return functools.partial(wrap_client_method, wrapper=wrapper)


def _method(wrapper: Wrapper) -> Callable[[Any], Any]:
    return functools.partial(wrap_method, wrapper=wrapper)
