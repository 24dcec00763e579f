"""The interface for intercepting any client: record each call at capture, answer it at replay.

An interceptor is an object with:

- `kind`: the channel its calls are recorded on (`"redis"`, `"smtp"`, `"kafka"`...);
- `patches()`: a list of `Patch(owner, attribute, replacement)`; an empty list when its client is not
  installed (`loaded("module")` is None). FluxRun applies them and restores the originals at shutdown;
- `rebind()` (optional): `{id(original): replacement}` for `from x import f`-style names in app modules.

Each replacement does three things per call, with the helpers below:

    scope = active()                  # one context-variable read: None outside a capture or replay
    if scope is None:
        return original(*args)        # not captured: straight through
    if replaying(scope):              # replay: answer from the recording, the original never runs
        return decode(answer(scope, KIND, label, fields_match(data))["data"]["result"])
    return record(scope, KIND, label, data, lambda: original(*args))

`record` runs the real call with nested capture suspended (the client's own clock reads and sockets are
part of this call, not events of their own) and appends one event holding `data` and the encoded result,
or the exception. `answer` takes the recorded event that matches, in order within the calling task, raises
the recorded exception again (as the same class), and raises `ReplayDivergence` naming the call, its line
and the nearest recorded call with a diff when nothing matches. Interceptors registered in the
`fluxrun.interceptors` entry point group are loaded by `fluxrun.init` and by replay (see docs/interceptors.md).
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Iterable
from types import FrameType
from typing import Any

from fluxrun._context import Scope, current, scope_var
from fluxrun._diff import short_diff
from fluxrun._internal import first_app_frame, report_internal_error, site_of, site_ref
from fluxrun.answering import Matcher, serve_kind
from fluxrun.interceptors.base import Patch, loaded, raise_recorded_error
from fluxrun.interceptors.hot_path import IMMUTABLE, end_call, fail_call, start_call
from fluxrun.model.recording import CallEntry
from fluxrun.model.schema import AnyEvent
from fluxrun.model.values import decode, encode

__all__ = [
    "Matcher",
    "Patch",
    "active",
    "answer",
    "app_frame",
    "decode",
    "encode",
    "fields_match",
    "loaded",
    "record",
    "record_async",
    "replaying",
    "serve_kind",
]


# `active()`: the capture or replay this call belongs to, or None (then call the original straight through).
# The context variable's own `get`, so the check costs no Python frame of FluxRun's.
active: Callable[[], Scope | None] = current


def replaying(scope: Scope) -> bool:
    """True when the scope is a replay: answer from the recording, never run the original."""
    return scope.session is not None


def app_frame() -> FrameType | None:
    """The app's own frame that made the call (past FluxRun and the client library), else the nearest caller."""
    return first_app_frame(sys._getframe(2))


def _start(scope: Scope, kind: str, call: str, data: dict[str, Any], caller: FrameType) -> CallEntry | None:
    """The entry of a call `record` runs; `caller` is the frame that called `record` (the interceptor's)."""
    try:
        frame = first_app_frame(caller)  # its site formatted only if the execution is kept (site_ref)
        return start_call(scope, kind, call, site_ref(frame) if frame is not None else "?:?:0", data)
    except Exception as exc:
        report_internal_error(f"{kind} capture", exc)
        return None


def _encoded_result(data: dict[str, Any]) -> dict[str, Any]:
    """The `build` of an entry whose result was kept as it is: its data with the result encoded."""
    return {**data, "result": encode(data["result"])}


def _finish(entry: CallEntry | None, kind: str, value: Any, result: Callable[[Any], Any], scope: Scope) -> None:
    if entry is None:
        return
    try:
        if not end_call(entry, scope):  # its completion number, for replay's order; False: the execution had ended
            return
        # a result that cannot change is kept as it is under the default `encode`, and encoded only if the
        # execution is kept and sealed (most are dropped): a Redis GET's bytes are not base64'd per call
        if result is encode and type(value) in IMMUTABLE:
            entry.value["result"] = value
            entry.build = _encoded_result
        else:
            entry.value["result"] = result(value)
    except Exception as exc:
        report_internal_error(f"{kind} capture", exc)


def _fail(entry: CallEntry | None, kind: str, exc: BaseException, scope: Scope) -> None:
    if entry is None:
        return
    try:
        fail_call(entry, exc, scope)
    except Exception as internal:
        report_internal_error(f"{kind} capture", internal)


def record(
    scope: Scope,
    kind: str,
    call: str,
    data: dict[str, Any],
    run: Callable[[], Any],
    *,
    result: Callable[[Any], Any] = encode,
) -> Any:
    """Run the real call and record it as one event: `data` (a snapshot, made by the caller) plus
    `result(value)` (by default `encode(value)`) under `"result"`, or the exception it raised.

    `call` is what summaries and divergence messages show: name the operation, never values (it leaves
    the app in plaintext). Failures of the bookkeeping are reported once and never reach the app."""
    entry = _start(scope, kind, call, data, sys._getframe(1))
    token = scope_var.set(None)
    try:
        value = run()
    except BaseException as exc:
        scope_var.reset(token)
        _fail(entry, kind, exc, scope)
        raise
    scope_var.reset(token)
    _finish(entry, kind, value, result, scope)
    return value


async def record_async(
    scope: Scope,
    kind: str,
    call: str,
    data: dict[str, Any],
    run: Callable[[], Awaitable[Any]],
    *,
    result: Callable[[Any], Any] = encode,
) -> Any:
    """`record` for a coroutine: `run()` returns the awaitable of the real call."""
    entry = _start(scope, kind, call, data, sys._getframe(1))
    token = scope_var.set(None)
    try:
        value = await run()
    except BaseException as exc:
        scope_var.reset(token)
        _fail(entry, kind, exc, scope)
        raise
    scope_var.reset(token)
    _finish(entry, kind, value, result, scope)
    return value


def answer(scope: Scope, kind: str, call: str, match: Matcher | None = None) -> AnyEvent:
    """The recorded event answering this call (matched in order within the calling task); its recorded
    exception is raised again. Raises `ReplayDivergence` when the recording has no such call."""
    here = scope.here()
    frame = app_frame()
    site = site_of(frame)
    session = here.session
    assert session is not None, "answer() is for replays: check replaying(scope) first"
    event = session.take(kind, call, here.path, frame, site, match=match)
    here.recording.add(kind, call, here.path, site, {})
    if "done" in (event.get("data") or {}):  # answered in the recorded completion order (replay/scheduler.py)
        session.wait_turn(event, "result")
    raise_recorded_error(event)
    return event


def fields_match(made: dict[str, Any], fields: Iterable[str] | None = None) -> Matcher:
    """A matcher: the recorded event's `data` has the same values as `made` for `fields` (all of `made`'s
    keys by default), compared in their recorded (encoded) form; else a short diff of the first that differs."""
    keys = list(made if fields is None else fields)

    def match(event: AnyEvent) -> str | None:
        data = event.get("data") or {}
        for key in keys:
            if data.get(key) != made.get(key):
                return f"{key} differs:\n" + short_diff(_show(data.get(key)), _show(made.get(key)), width=160)
        return None

    return match


def _show(value: Any) -> str:
    """An encoded value as people read it: bytes tags shown as b'...' (decoded), everything else as repr."""
    try:
        return repr(decode(value))
    except Exception:
        return repr(value)
