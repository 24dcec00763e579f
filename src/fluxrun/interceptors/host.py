"""Declared boundaries: `@fluxrun.boundary("payments.charge")` marks a host call (DB, payment, queue, email).

Its arguments and its result or exception are recorded; IO inside its body belongs to the call
and is not recorded separately. At replay the body does not run: the call returns the recorded
result or raises the recorded exception, provided it is made with the recorded arguments.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import wrapt

from fluxrun._context import Scope, current, scope_var
from fluxrun._diff import short_diff
from fluxrun._internal import caller_frame, caller_site, report_internal_error, site_of
from fluxrun.answering import Matcher
from fluxrun.interceptors.base import raise_recorded_error
from fluxrun.interceptors.hot_path import IMMUTABLE, end_call, fail_call, start_call
from fluxrun.model.recording import CallEntry
from fluxrun.model.schema import EventDict, HostData
from fluxrun.model.values import MAX_BYTES, all_plain, decode, encode

__all__ = ["boundary"]

KIND = "host"
F = TypeVar("F", bound=Callable[..., Any])


def _start(scope: Scope, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CallEntry | None:
    """Append the call to the log (completed by `_finish`); arguments are encoded now, a snapshot."""
    try:
        # encode(list(args)) without the intermediate list: items at depth 1, as inside a list
        encoded = list(args) if all_plain(args, MAX_BYTES) else [encode(a, _depth=1) for a in args]
        data = {"name": name, "args": encoded, "kwargs": encode(kwargs) if kwargs else {}}
        return start_call(scope, KIND, name, caller_site(2), data)
    except Exception as exc:
        report_internal_error("boundary capture", exc)
        return None


def _finish(scope: Scope, entry: CallEntry | None, result: Any = None, exc: BaseException | None = None) -> None:
    if entry is None:
        return
    try:
        if exc is not None:
            fail_call(entry, exc, scope)
        elif end_call(entry, scope):
            if type(result) in IMMUTABLE:
                entry.value["result"] = result  # immutable: encoded when the execution is sealed
                entry.build = _encode_result
            else:
                entry.value["result"] = encode(result)
    except Exception as internal:
        report_internal_error("boundary capture", internal)


def _encode_result(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "result": encode(data["result"])}


def _arguments_match(args: Any, kwargs: Any) -> Matcher:
    """A matcher: the recorded call had the same arguments (compared in their recorded, encoded form)."""
    try:
        encoded_args, encoded_kwargs = encode(list(args)), encode(kwargs)
    except Exception:  # unencodable arguments: match on the name alone
        return lambda event: None

    def match(event: EventDict[HostData]) -> str | None:
        recorded_args, recorded_kwargs = event["data"].get("args"), event["data"].get("kwargs")
        if recorded_args == encoded_args and recorded_kwargs == encoded_kwargs:
            return None
        return "arguments differ:\n" + short_diff(
            f"args={recorded_args!r} kwargs={recorded_kwargs!r}", f"args={encoded_args!r} kwargs={encoded_kwargs!r}"
        )

    return match


def _take(scope: Scope, name: str, args: Any, kwargs: Any, depth: int) -> tuple[Any, ...]:
    """Replay: the recorded call (taken now, in call order) and where it was made."""
    here = scope.here()
    frame = caller_frame(depth)
    site = site_of(frame)
    assert here.session is not None
    event = here.session.take(KIND, name, here.path, frame, site, name=name, match=_arguments_match(args, kwargs))
    return here, event, frame, site


def _answer(name: str, taken: tuple[Any, ...]) -> Any:
    """The recorded result (or exception) of a taken call, once its turn has come; the body does not run."""
    here, event, frame, site = taken
    here.recording.add(KIND, name, here.path, site, {})
    raise_recorded_error(event)
    data = event.get("data") or {}
    if "result" not in data:
        raise here.session.refuse(KIND, name, here.path, frame, "the recording holds no result for it")
    return decode(data["result"])


def _serve(scope: Scope, name: str, args: Any, kwargs: Any) -> Any:
    taken = _take(scope, name, args, kwargs, 4)
    taken[0].session.wait_turn(taken[1], "result")
    return _answer(name, taken)


def _in_class_body(func: Any) -> bool:
    """True for a function defined in a class body (`Ledger.append`), whose calls are bound method calls."""
    qualname = getattr(func, "__qualname__", "")
    return "." in qualname and not qualname.rsplit(".", 1)[0].endswith("<locals>")


def boundary(name: str) -> Callable[[F], F]:
    """Declare a function (sync or async) as a host call named `name`, recorded as one event."""
    if not isinstance(name, str) or not name:
        raise TypeError('fluxrun.boundary needs a name, e.g. @fluxrun.boundary("payments.charge")')

    def decorate(func: F) -> F:
        if inspect.iscoroutinefunction(func):

            async def replay_async(scope: Scope, args: Any, kwargs: Any) -> Any:
                taken = _take(scope, name, args, kwargs, 3)
                await taken[0].session.turn(taken[1], "result")
                return _answer(name, taken)

            async def record_async(scope: Scope, wrapped: Any, args: Any, kwargs: Any) -> Any:
                event = _start(scope, name, args, kwargs)
                token = scope_var.set(None)
                try:
                    result = await wrapped(*args, **kwargs)
                except BaseException as exc:
                    scope_var.reset(token)
                    _finish(scope, event, exc=exc)
                    raise
                scope_var.reset(token)
                _finish(scope, event, result)
                return result

            def async_wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
                scope = current()
                if scope is None:
                    return wrapped(*args, **kwargs)
                if scope.session is not None:
                    return replay_async(scope, args, kwargs)
                return record_async(scope, wrapped, args, kwargs)

            return wrapt.FunctionWrapper(func, async_wrapper)  # type: ignore[return-value]

        def call(wrapped: Any, args: Any, kwargs: Any) -> Any:
            scope = current()
            if scope is None:
                return wrapped(*args, **kwargs)
            if scope.session is not None:
                return _serve(scope, name, args, kwargs)
            event = _start(scope, name, args, kwargs)
            token = scope_var.set(None)
            try:
                result = wrapped(*args, **kwargs)
            except BaseException as exc:
                scope_var.reset(token)
                _finish(scope, event, exc=exc)
                raise
            scope_var.reset(token)
            _finish(scope, event, result)
            return result

        if _in_class_body(func):  # wrapt binds methods, so the instance is the receiver, not an argument

            def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
                return call(wrapped, args, kwargs)

            return wrapt.FunctionWrapper(func, wrapper)  # type: ignore[return-value]

        @functools.wraps(func)
        def boundary_call(*args: Any, **kwargs: Any) -> Any:
            """A plain function's boundary: a closure, far cheaper per idle call than wrapt's wrapper."""
            scope = current()
            if scope is None:
                return func(*args, **kwargs)
            return call(func, args, kwargs)

        return boundary_call  # type: ignore[return-value]

    return decorate
