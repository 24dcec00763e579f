"""Declared boundaries: `@fluxrun.boundary("payments.charge")` marks a host call (DB, payment, queue, email).

Its arguments and its result or exception are recorded; IO inside its body belongs to the call
and is not recorded separately. At replay the body does not run: the call returns the recorded
result or raises the recorded exception, provided it is made with the recorded arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import wrapt

from fluxrun._context import Scope, current, scope_var
from fluxrun._internal import caller_frame, perf_ns, report_internal_error, site_of, site_ref
from fluxrun.interceptors.base import error_fields, raise_recorded_error
from fluxrun.model.recording import Event
from fluxrun.model.values import decode, encode
from fluxrun.replay.diff import short_diff

__all__ = ["boundary"]

KIND = "host"
F = TypeVar("F", bound=Callable[..., Any])


def _start(scope: Scope, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Event | None:
    try:
        here = scope.here()
        data = {"name": name, "args": encode(list(args)), "kwargs": encode(kwargs)}
        frame = caller_frame(3)
        return here.recording.add(KIND, name, here.path, site_ref(frame) if frame else "?:?:0", data)
    except Exception as exc:
        report_internal_error("boundary capture", exc)
        return None


def _finish(event: Event | None, scope: Scope, result: Any = None, exc: BaseException | None = None) -> None:
    if event is None:
        return
    try:
        event.dur_ns = perf_ns() - scope.recording.started_ns - event.start_ns
        if exc is not None:
            event.error = error_fields(exc)
        else:
            event.data["result"] = encode(result)
    except Exception as internal:
        report_internal_error("boundary capture", internal)


def _arguments_match(args: Any, kwargs: Any) -> Callable[[dict[str, Any]], str | None]:
    """A matcher: the recorded call had the same arguments (compared in their recorded, encoded form)."""
    try:
        encoded_args, encoded_kwargs = encode(list(args)), encode(kwargs)
    except Exception:  # unencodable arguments: match on the name alone
        return lambda event: None

    def match(event: dict[str, Any]) -> str | None:
        recorded_args, recorded_kwargs = event["data"].get("args"), event["data"].get("kwargs")
        if recorded_args == encoded_args and recorded_kwargs == encoded_kwargs:
            return None
        return "arguments differ:\n" + short_diff(
            f"args={recorded_args!r} kwargs={recorded_kwargs!r}", f"args={encoded_args!r} kwargs={encoded_kwargs!r}"
        )

    return match


def _serve(scope: Scope, name: str, args: Any, kwargs: Any) -> Any:
    """Replay: the recorded result (or exception) of the call; the body does not run."""
    here = scope.here()
    frame = caller_frame(3)
    site = site_of(frame)
    assert here.session is not None
    event = here.session.take(KIND, name, here.path, frame, site, name=name, match=_arguments_match(args, kwargs))
    here.recording.add(KIND, name, here.path, site, {})
    raise_recorded_error(event)
    return decode(event["data"].get("result"))


def boundary(name: str) -> Callable[[F], F]:
    """Declare a function (sync or async) as a host call named `name`, recorded as one event."""
    if not isinstance(name, str) or not name:
        raise TypeError('fluxrun.boundary needs a name, e.g. @fluxrun.boundary("payments.charge")')

    def decorate(func: F) -> F:
        if inspect.iscoroutinefunction(func):

            async def replay_async(scope: Scope, args: Any, kwargs: Any) -> Any:
                return _serve(scope, name, args, kwargs)

            async def record_async(scope: Scope, wrapped: Any, args: Any, kwargs: Any) -> Any:
                event = _start(scope, name, args, kwargs)
                token = scope_var.set(None)
                try:
                    result = await wrapped(*args, **kwargs)
                except BaseException as exc:
                    scope_var.reset(token)
                    _finish(event, scope, exc=exc)
                    raise
                scope_var.reset(token)
                _finish(event, scope, result)
                return result

            def async_wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
                scope = current()
                if scope is None:
                    return wrapped(*args, **kwargs)
                if scope.session is not None:
                    return replay_async(scope, args, kwargs)
                return record_async(scope, wrapped, args, kwargs)

            return wrapt.FunctionWrapper(func, async_wrapper)  # type: ignore[return-value]

        def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
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
                _finish(event, scope, exc=exc)
                raise
            scope_var.reset(token)
            _finish(event, scope, result)
            return result

        return wrapt.FunctionWrapper(func, wrapper)  # type: ignore[return-value]

    return decorate
