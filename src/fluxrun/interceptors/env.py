"""Env reads: `os.environ[...]`, `os.environ.get`, `os.getenv` and `key in os.environ`.

`__getitem__`, `get` and `__contains__` are patched on `_Environ` (`os.getenv` calls `get`), so each
read is one call of ours whatever the spelling.

At replay a read returns the recorded value even if the environment has changed since; the
recording is a snapshot, so a variable read once and read again is answered both times.

A read of a missing variable is recorded as absent (the KeyError `get` swallows), because "not set"
is as much a part of what the code saw as a value.
"""

from __future__ import annotations

import functools
import os
import types
from asyncio.events import _get_running_loop
from collections.abc import Callable
from sys import _getframe
from types import FrameType
from typing import Any

from fluxrun._context import Scope, _get_ident, _task_of, current
from fluxrun._internal import (
    _LIBRARY,
    _PLUMBING,
    SiteRef,
    _verdicts,
    app_site,
    app_site_from,
    caller_frame,
    frame_is_library,
    perf_ns,
    report_internal_error,
    site_of,
)
from fluxrun.interceptors.base import Patch

__all__ = ["EnvInterceptor"]

KIND = "env"
_Environ = type(os.environ)


_real_getitem = vars(_Environ)["__getitem__"]


# What Mapping.get and Mapping.__contains__ (which _Environ inherits) do, without their trip through the
# patched `__getitem__`: a library's membership check (FastAPI's OTEL_* provider checks, on every request
# when OpenTelemetry is installed) would otherwise be classified twice, once here and once in `_getitem`.
def _lookup(environ: Any, key: Any, default: Any) -> Any:
    try:
        return _real_getitem(environ, key)
    except KeyError:
        return default


def _has(environ: Any, key: Any) -> bool:
    try:
        _real_getitem(environ, key)
    except KeyError:
        return False
    return True


@functools.wraps(_real_getitem)
def _getitem(self: Any, key: Any) -> Any:
    """`_Environ.__getitem__` while installed: written out rather than through `wrap_method`, since env
    reads are frequent and each layer of call costs on the request path."""
    scope = current()
    if scope is None or self is not os.environ:
        return _real_getitem(self, key)
    if scope.session is not None:
        return _replay_read(scope, key, types.MethodType(_real_getitem, self), (key,), {})
    frame = _getframe(1)  # app_site(1), its common case inlined: read straight from the app's code
    code = frame.f_code
    known = _verdicts.get(id(code))
    if known is not None and known[0] is code and known[1] != _PLUMBING:
        if known[1] == _LIBRARY:  # a library's own internals (tempfile, a telemetry check): not the app's IO
            return _real_getitem(self, key)
        site: SiteRef = (known[2], code, frame.f_lasti)
    else:
        found = app_site(1)
        if found is None:
            return _real_getitem(self, key)
        site = found
    try:
        value = _real_getitem(self, key)  # a dict lookup: no IO of its own, nothing to suspend
    except KeyError:
        _record_missing(scope, key, site)
        raise
    try:
        loop = _get_running_loop()
        owner = _task_of(loop) if loop is not None else _get_ident()
        here = scope if owner is scope.owner or owner == scope.owner else scope.here()
        # str key and value: kept as they are, the event is formatted only if the execution is sealed
        here.recording.log.append((KIND, f"env {key}", here.path, site, perf_ns(), 0, _present, (key, value), None))
    except Exception as exc:
        report_internal_error("env capture", exc)
    return value


def _site_of_caller(frame: FrameType) -> SiteRef | None:
    """The site of the code that made an env read whose caller frame is `frame`; None for a library's."""
    code = frame.f_code
    known = _verdicts.get(id(code))
    if known is not None and known[0] is code and known[1] != _PLUMBING:
        return None if known[1] == _LIBRARY else (known[2], code, frame.f_lasti)
    return app_site_from(frame)


def _record_present(scope: Scope, key: str, value: str, site: SiteRef) -> None:
    try:
        loop = _get_running_loop()
        owner = _task_of(loop) if loop is not None else _get_ident()
        here = scope if owner is scope.owner or owner == scope.owner else scope.here()
        here.recording.log.append((KIND, f"env {key}", here.path, site, perf_ns(), 0, _present, (key, value), None))
    except Exception as exc:
        report_internal_error("env capture", exc)


def _get(self: Any, key: Any, default: Any = None) -> Any:
    """`os.environ.get` while installed: `Mapping.get` without its frame and its trip through `__getitem__`."""
    scope = current()
    if scope is None or self is not os.environ:
        return _lookup(self, key, default)
    if scope.session is not None:
        try:
            return _replay_read(scope, key, types.MethodType(_real_getitem, self), (key,), {})
        except KeyError:
            return default
    site = _site_of_caller(_getframe(1))
    if site is None:
        return _lookup(self, key, default)
    try:
        value = _real_getitem(self, key)
    except KeyError:
        _record_missing(scope, key, site)
        return default
    _record_present(scope, key, value, site)
    return value


def _contains(self: Any, key: Any) -> bool:
    """`key in os.environ` while installed: a read like any other (present, or recorded as absent)."""
    scope = current()
    if scope is None or self is not os.environ:
        return _has(self, key)
    if scope.session is not None:
        try:
            _replay_read(scope, key, types.MethodType(_real_getitem, self), (key,), {})
        except KeyError:
            return False
        return True
    site = _site_of_caller(_getframe(1))
    if site is None:
        return _has(self, key)
    try:
        value = _real_getitem(self, key)
    except KeyError:
        _record_missing(scope, key, site)
        return False
    _record_present(scope, key, value, site)
    return True


def _present(read: tuple[str, str]) -> dict[str, Any]:
    return {"key": read[0], "present": True, "value": read[1]}


def _record_missing(scope: Scope, key: str, site: SiteRef) -> None:
    try:
        here = scope.here()
        event = here.recording.add(KIND, f"env {key}", here.path, site, {})
        event.error = {"type": "builtins:KeyError", "message": repr(key), "key": key, "present": False}
    except Exception as exc:
        report_internal_error("env capture", exc)


def _replay_read(
    scope: Scope, key: str, wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Replay: the recorded value (or absence), whatever the environment holds now."""
    frame = caller_frame(3)
    if frame is None or frame_is_library(frame):
        return wrapped(*args, **kwargs)
    here = scope.here()
    assert here.session is not None
    event = here.session.env_read(key, here.path, frame)
    here.recording.add(KIND, f"env {key}", here.path, site_of(frame), {})
    if not event["data"].get("present", "error" not in event):
        raise KeyError(key)
    return event["data"]["value"]


class EnvInterceptor:
    kind = KIND

    def __init__(self) -> None:
        self._getitem = _getitem

    def patches(self) -> list[Patch]:
        return [
            Patch(_Environ, "__getitem__", self._getitem),
            Patch(_Environ, "get", _get),
            Patch(_Environ, "__contains__", _contains),
        ]

    def rebind(self) -> dict[int, Any]:
        return {}
