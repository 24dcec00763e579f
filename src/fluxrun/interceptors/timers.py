"""Timers: `time.sleep` and `asyncio.sleep`. Recorded with the requested delay; at replay they return at once.

Every sleep inside a replayed execution returns at once, whoever sleeps: the app's, an installed SDK's retry
backoff (recorded like the app's, served from its own stream), and the standard library's (not recorded).
`asyncio.sleep` still yields to the loop once, as `asyncio.sleep(0)` does, so other tasks run. So the replay
of an SDK that retried three times with seconds of backoff takes milliseconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import wrapt

from fluxrun._context import Scope, current, scope_var
from fluxrun._internal import (
    LIBRARY,
    PACKAGE,
    caller_frame,
    perf_ns,
    reader,
    report_internal_error,
    site_of,
    site_ref,
)
from fluxrun.interceptors.base import Patch, raise_recorded_error, serve_call, wrap
from fluxrun.interceptors.hot_path import record_call

__all__ = ["TimersInterceptor"]

KIND = "timer"


def _delay(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The requested delay as a plain number: tenacity passes a float subclass (`DoSleep`), which the bundle
    encoder refuses, and that cost the whole execution its bundle."""
    value = args[0] if args else kwargs.get("delay", kwargs.get("secs"))
    if value is None or type(value) in (int, float):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _nothing(_: Any) -> None:
    return None


def _no_wait(wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """A sleep the recording does not hold (the standard library's, or past an SDK's recorded ones) at replay."""
    return None


def _sleep_wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    scope = current()
    if scope is None:
        return wrapped(*args, **kwargs)
    if scope.session is not None:  # replay: answered at once, the delay is not waited
        return serve_call(scope, KIND, "time.sleep", wrapped, args, kwargs, _nothing, live=_no_wait)
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
        who = reader(frame) if frame is not None else LIBRARY
        seconds = _delay(args, kwargs)
        # a package's `sleep(0)` is a checkpoint (anyio yields to the loop), not a timer: it stays out of the tape
        if frame is not None and who != LIBRARY and not (who == PACKAGE and seconds == 0):
            here = scope.here()
            event = here.recording.add(KIND, "asyncio.sleep", here.path, site_ref(frame), {"seconds": seconds})
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
    result = kwargs.get("result", args[1] if len(args) > 1 else None)
    frame = caller_frame(2)
    who = reader(frame)
    checkpoint = who == PACKAGE and _delay(args, kwargs) == 0  # never recorded (see _record_async_sleep)
    if frame is not None and who != LIBRARY and not checkpoint:
        here = scope.here()
        site = site_of(frame)
        assert here.session is not None
        if who == PACKAGE:
            event = here.session.take_if_recorded(KIND, "asyncio.sleep", here.path, site)
        else:
            event = here.session.take(KIND, "asyncio.sleep", here.path, frame, site)
        if event is not None:
            here.recording.add(KIND, "asyncio.sleep", here.path, site, {})
            raise_recorded_error(event)
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
