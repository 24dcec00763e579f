"""Timers: `time.sleep` and `asyncio.sleep`. Recorded with the requested delay; at replay they return at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import wrapt

from fluxrun._context import Scope, current, scope_var
from fluxrun._internal import caller_frame, frame_is_library, perf_ns, report_internal_error, site_of, site_ref
from fluxrun.interceptors.base import Patch, raise_recorded_error, record_call, serve_call, wrap

__all__ = ["TimersInterceptor"]

KIND = "timer"


def _delay(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return args[0] if args else kwargs.get("delay", kwargs.get("secs"))


def _sleep_wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    scope = current()
    if scope is None:
        return wrapped(*args, **kwargs)
    if scope.session is not None:  # replay: answered at once, the delay is not waited
        return serve_call(scope, KIND, "time.sleep", wrapped, args, kwargs, lambda _: None)
    seconds = _delay(args, kwargs)
    return record_call(scope, KIND, "time.sleep", wrapped, args, kwargs, lambda _: {"seconds": seconds})


async def _record_async_sleep(
    scope: Scope,
    wrapped: Callable[..., Coroutine[Any, Any, Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    here: Scope | None = None
    try:
        # caller of the coroutine: this coroutine's frame is 0, the awaiting frame is 1
        frame = caller_frame(2)
        if frame is not None and not frame_is_library(frame):
            here = scope.here()
            event = here.recording.add(
                KIND, "asyncio.sleep", here.path, site_ref(frame), {"seconds": _delay(args, kwargs)}
            )
    except Exception as exc:
        report_internal_error("timer capture", exc)
        here = None
    if here is None:
        return await wrapped(*args, **kwargs)
    token = scope_var.set(None)
    try:
        return await wrapped(*args, **kwargs)
    finally:
        scope_var.reset(token)
        event.dur_ns = perf_ns() - here.recording.started_ns - event.start_ns


def _async_sleep_wrapper(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    scope = current()
    if scope is None:
        return wrapped(*args, **kwargs)
    if scope.session is not None:
        return _replay_async_sleep(scope, wrapped, args, kwargs)
    return _record_async_sleep(scope, wrapped, args, kwargs)


async def _replay_async_sleep(
    scope: Scope, wrapped: Callable[..., Coroutine[Any, Any, Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Answered at once; still yields to the loop once, as `asyncio.sleep(0)` would, so other tasks run."""
    frame = caller_frame(2)
    if frame is None or frame_is_library(frame):
        return await wrapped(*args, **kwargs)
    here = scope.here()
    site = site_of(frame)
    assert here.session is not None
    event = here.session.take(KIND, "asyncio.sleep", here.path, frame, site)
    here.recording.add(KIND, "asyncio.sleep", here.path, site, {})
    raise_recorded_error(event)
    result = kwargs.get("result", args[1] if len(args) > 1 else None)
    return await wrapped(0, result)


class TimersInterceptor:
    kind = KIND

    def __init__(self) -> None:
        self._sleep = wrap(time.sleep, _sleep_wrapper)
        self._async_sleep = wrapt.FunctionWrapper(asyncio.sleep, _async_sleep_wrapper)

    def patches(self) -> list[Patch]:
        return [Patch(time, "sleep", self._sleep), Patch(asyncio, "sleep", self._async_sleep)]

    def rebind(self) -> dict[int, Any]:
        return {
            id(self._sleep.__wrapped__): self._sleep,
            id(self._async_sleep.__wrapped__): self._async_sleep,
        }
