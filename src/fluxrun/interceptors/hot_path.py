"""The hot path of a recorded call, on one screen: which task made it, its entry in the log, its end.

An interceptor reads the context variable first (`current()`) and calls straight through when it is None.
Otherwise it finds the call's site (one cached lookup per frame, `_internal.app_site`) and comes here, so
what a recorded call costs is this module: the calling task's scope (nearly always the scope's own task or
thread: two reads and a comparison, inlined; `Scope.here` for the rest), one entry appended to the
execution's log (an `Entry` tuple, or a `CallEntry` for a call whose outcome comes later: `start_call`),
and for the latter its duration and completion number when it returns (`end_call`, `fail_call`).
`value_patch` and `record_call` are the whole path of the most frequent calls (clock, randomness, sleeps).
Nothing is formatted on the request path: most executions succeed and are dropped, and a kept one's
entries become events when it is sealed (`Recording.events`).
"""

from __future__ import annotations

import datetime
import functools
import sys
import uuid
from collections.abc import Callable
from sys import _getframe
from typing import Any

from fluxrun._context import Scope, current, parked, running_loop, scope_var, task_of, thread_id
from fluxrun._internal import LIBRARY, PLUMBING, SiteRef, app_site, perf_ns, report_internal_error, verdicts
from fluxrun.interceptors.base import serve_call
from fluxrun.model.recording import CallEntry, Recording
from fluxrun.model.schema import AnyEvent, EventError

__all__ = [
    "IMMUTABLE",
    "append_value",
    "as_data",
    "detached_call",
    "end_call",
    "error_fields",
    "fail_call",
    "record_call",
    "record_value",
    "start_call",
    "value_patch",
]


def as_data(data: dict[str, Any]) -> dict[str, Any]:
    """The `build` of an entry whose value is its data already (a snapshot dict)."""
    return data


def append_value(scope: Scope, kind: str, call: str | None, site: Any, build: Callable[[Any], Any], value: Any) -> None:
    """A call complete when it returns (a clock or env read, a log record): one entry, `build(value)` its
    data when sealed. `value` must not change afterwards (immutable, or a snapshot)."""
    loop = running_loop()
    owner = task_of(loop) if loop is not None else thread_id()
    here = scope if owner is scope.owner or owner == scope.owner else scope.here()
    here.recording.log.append((kind, call, here.path, site, perf_ns(), build, value))  # an Entry


def start_call(scope: Scope, kind: str, call: str | None, site: Any, data: Any) -> CallEntry:
    """A call whose outcome comes later (a fetch, a boundary, a statement): appended now, so its place in
    the log is the call's start, with its data dict (a snapshot) to complete; `end_call` or `fail_call` ends it."""
    loop = running_loop()
    owner = task_of(loop) if loop is not None else thread_id()
    here = scope if owner is scope.owner or owner == scope.owner else scope.here()
    entry = CallEntry()
    entry.kind = kind
    entry.call = call
    entry.task = here.path
    entry.site = site
    entry.start_ns = perf_ns()
    entry.dur_ns = 0
    entry.build = as_data
    entry.value = data
    entry.error = None
    here.recording.log.append(entry)
    return entry


def detached_call(kind: str, call: str | None, data: Any) -> CallEntry:
    """A call kept outside any execution's log (a connection's setup, which the connect event of each
    execution that uses the connection later holds): no task, no site; `end_call` or `fail_call` ends it."""
    entry = CallEntry()
    entry.kind = kind
    entry.call = call
    entry.task = ""
    entry.site = None
    entry.start_ns = perf_ns()
    entry.dur_ns = 0
    entry.build = as_data
    entry.value = data
    entry.error = None
    return entry


def end_call(entry: CallEntry, scope: Scope | None = None) -> bool:
    """The call returned: its duration, and with `scope` its completion number (the order in which replay's
    scheduler releases answers). False when the execution had ended first: the app never saw this outcome,
    so the call stays pending at replay."""
    entry.dur_ns = perf_ns() - entry.start_ns
    if scope is None:
        return True
    recording = scope.recording
    if "kind" in recording.outcome:
        return False
    entry.value["done"] = done = next(scope.clock)
    if recording.threads:  # the execution runs threads of its own: which were busy as this outcome came
        _note_states(recording, done)
    return True


def _note_states(recording: Recording, done: int) -> None:
    """Which of the execution's threads (those it started and a synchronous root) were busy, and which were
    parked in `threading`, when completion `done` was taken: replay holds that answer until the ones that
    were parked have parked again (replay/scheduler.py)."""
    frames = sys._current_frames()
    try:
        me = thread_id()
        busy: list[str] = []
        waiting: list[str] = []
        for ident, path in list(recording.threads.items()):
            if ident != me:
                (waiting if parked(frames.get(ident)) else busy).append(path)
        recording.states[done] = (busy, waiting)
    finally:
        # it holds this very frame: kept, the frame would point at itself, and the whole call stack (the app's
        # responses and their sockets) would wait for the cyclic collector
        del frames


def fail_call(entry: CallEntry, exc: BaseException, scope: Scope | None = None) -> None:
    """The call raised: `end_call`, then the exception's fields (unless the execution had ended)."""
    if end_call(entry, scope):
        entry.error = error_fields(exc)


# Results that cannot change after the call returns: recorded as they are, formatted only if kept.
IMMUTABLE = frozenset({float, int, bool, str, bytes, type(None), uuid.UUID, datetime.datetime, datetime.date})


def _as_value(value: Any) -> dict[str, Any]:
    return {"value": value}


def _encoded_value(value: Any) -> dict[str, Any]:
    from fluxrun.model.values import encode

    return {"value": encode(value)}


def record_call(
    scope: Scope,
    kind: str,
    call: str,
    wrapped: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    data: Callable[[Any], dict[str, Any]],
    *,
    on_error: Callable[[BaseException], EventError] | None = None,
) -> Any:
    """Run `wrapped` and record it as one event of `kind` whose fields `data(result)` builds.

    Calls made by the internals of the standard library or an installed package (asyncio's clock,
    logging's timestamps, tempfile's env reads) are not the app's IO and go straight through.
    `data(result)` runs when the execution is sealed if the result is immutable, else at once (a snapshot).
    """
    try:
        site = app_site(2)
        # appended before the call runs, its place in the log is the call's start; completed when it returns
        entry = None if site is None else start_call(scope, kind, call, site, {})
    except Exception as exc:
        report_internal_error(f"{kind} capture", exc)
        entry = None
    if entry is None:
        return wrapped(*args, **kwargs)
    token = scope_var.set(None)
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        scope_var.reset(token)
        try:
            if on_error is None:
                fail_call(entry, exc)
            else:
                end_call(entry)
                entry.error = on_error(exc)
        except Exception as internal:
            report_internal_error(f"{kind} capture", internal)
        raise
    scope_var.reset(token)
    try:
        end_call(entry)
        if type(result) in IMMUTABLE:
            entry.build, entry.value = data, result
        else:
            entry.value = data(result)
    except Exception as exc:
        report_internal_error(f"{kind} capture", exc)
    return result


def record_value(
    scope: Scope,
    kind: str,
    call: str,
    wrapped: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    encoded: bool = False,
) -> Any:
    """The lean path of `record_call` for calls that return a value and do no IO of their own
    (clock reads, `random.random`): nothing to suspend, one event appended after the call.
    `encoded`: the value is recorded through `values.encode` (deferred to sealing when immutable)."""
    site = app_site(2)
    if site is None:
        return wrapped(*args, **kwargs)
    try:
        result = wrapped(*args, **kwargs)
    except BaseException as exc:
        try:
            here = scope.here()
            event = here.recording.add(kind, call, here.path, site, {})
            event.error = error_fields(exc)
        except Exception as internal:
            report_internal_error(f"{kind} capture", internal)
        raise
    try:
        if not encoded:
            append_value(scope, kind, call, site, _as_value, result)
        elif type(result) in IMMUTABLE:
            append_value(scope, kind, call, site, _encoded_value, result)
        else:
            append_value(scope, kind, call, site, as_data, _encoded_value(result))
    except Exception as exc:
        report_internal_error(f"{kind} capture", exc)
    return result


def value_patch(
    original: Callable[..., Any],
    kind: str,
    call: str,
    answer: Callable[[AnyEvent], Any],
    *,
    encoded: bool = False,
    keywords: bool = True,
    run: Callable[..., Any] | None = None,
) -> Callable[..., Any]:
    """The replacement of a call that returns a value and does no IO of its own (clock reads,
    `random.random`, `os.urandom`): the most frequent calls, idle or recorded, so the idle path is one
    thin closure (`keywords=False` for functions that take none: no keyword dict per call) and the
    recorded path one more frame. At replay, `answer(event)` gives the value back. `encoded`: the
    value is recorded through `values.encode` (deferred when immutable). `run`: what is called in the
    original's place, the same function written without patched calls inside (uuid4 without os.urandom)."""
    build = _encoded_value if encoded else _as_value
    if run is not None:
        original, replaced = run, original
    else:
        replaced = original

    def recorded(scope: Scope, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if scope.session is not None:
            return serve_call(scope, kind, call, original, args, kwargs, answer, depth=4)
        frame = _getframe(2)  # app_site(2), its common case inlined: called straight from the app's code
        code = frame.f_code
        known = verdicts.get(id(code))
        if known is not None and known[0] is code and known[1] != PLUMBING:
            if known[1] == LIBRARY:  # a library's own internals (asyncio's clock): not the app's IO
                return original(*args, **kwargs)
            site: SiteRef = (known[2], code, frame.f_lasti)
        else:
            found = app_site(2)
            if found is None:
                return original(*args, **kwargs)
            site = found
        try:
            result = original(*args, **kwargs)
        except BaseException as exc:
            try:
                here = scope.here()
                here.recording.add(kind, call, here.path, site, {}).error = error_fields(exc)
            except Exception as internal:
                report_internal_error(f"{kind} capture", internal)
            raise
        try:  # append_value, inlined: this is the most frequent recorded call
            loop = running_loop()
            owner = task_of(loop) if loop is not None else thread_id()
            here = scope if owner is scope.owner or owner == scope.owner else scope.here()
            if not encoded or type(result) in IMMUTABLE:
                here.recording.log.append((kind, call, here.path, site, perf_ns(), build, result))  # an Entry
            else:
                here.recording.log.append((kind, call, here.path, site, perf_ns(), as_data, build(result)))
        except Exception as exc:
            report_internal_error(f"{kind} capture", exc)
        return result

    if keywords:

        @functools.wraps(replaced)
        def patched(*args: Any, **kwargs: Any) -> Any:
            scope = current()
            if scope is None:
                return original(*args, **kwargs)
            return recorded(scope, args, kwargs)

        return patched

    @functools.wraps(replaced)
    def patched_positional(*args: Any) -> Any:
        scope = current()
        if scope is None:
            return original(*args)
        return recorded(scope, args, _NO_KEYWORDS)

    return patched_positional


_NO_KEYWORDS: dict[str, Any] = {}


def error_fields(exc: BaseException) -> EventError:
    """What a recorded exception keeps: its type, message and encoded form (rebuilt at replay)."""
    from fluxrun.model.values import encode, type_path

    return {"type": type_path(type(exc)), "message": str(exc), "exception": encode(exc)}
