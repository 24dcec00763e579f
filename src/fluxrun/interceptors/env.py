"""Env reads: `os.environ[...]`, `os.environ.get`, `os.getenv` and `key in os.environ`, by any code.

The environment is a snapshot: the first read of each variable in an execution is recorded (its value, or
that it was not set), whoever reads it: the app, an installed SDK reading its API key inside the request,
or the standard library. Later reads of the same variable add nothing. At replay every read of a recorded
variable is answered from the recording, whatever the environment holds now, so a CI without the
production secrets takes the same path. A variable the app's own code reads at replay that the recording
lacks was not read at capture at all: a `ReplayDivergence` that says so. A library's read of a variable the
recording lacks is answered live: libraries read their settings once and cache them (OpenTelemetry's
OTEL_PYTHON_TRACER_PROVIDER, tempfile's TMPDIR), so whether that first read falls inside the execution
depends on what ran before it in the process, not on what the execution did.

A variable the replayed code sets or deletes itself is read live from then on, as it was at capture.

Walking the environment (`for key in os.environ`, `.keys()`, `.items()`, `.copy()`, `dict(os.environ)`,
`len(os.environ)`: urllib's proxy lookup, which httpx and requests use, botocore's copy) is a read of the
set of names: recorded once per execution, the first time the code walks it, as one env event under the
key `=names` (no variable can be named so). At replay every walk goes over the recorded names (plus what the
replayed code set, less what it deleted), and each value comes from the recorded snapshot. A walk by the
app's own code that the capture never made is a `ReplayDivergence`; a library's is answered live.

Each read names the code that made it (`site`), and a read the app's own code did not make is marked
with who did (`data["reader"]`: "package" for an installed package, "library" for the standard library):
httpx reading SSL_CERT_FILE while it builds its SSL context is httpx's read, not the app line that created
the client, and a display can leave it out of the app's reads. Replay serves it all the same.

`__getitem__`, `get` and `__contains__` are patched on `_Environ` (`os.getenv` calls `get`), so each
read is one call of ours whatever the spelling. The common case, a variable already read in this
execution, costs a set lookup. Values are recorded in the encrypted payload only; every display masks
them by the variable's name (`fluxrun bundle inspect`, the agent's unlock answer).
"""

from __future__ import annotations

import functools
import os
from sys import _getframe
from types import FrameType
from typing import Any

from fluxrun._context import Scope, current
from fluxrun._internal import APP, SiteRef, read_by, read_site, report_internal_error, site_ref, verdicts
from fluxrun.interceptors.base import Patch
from fluxrun.interceptors.hot_path import append_value

__all__ = ["EnvInterceptor"]

KIND = "env"
_Environ = type(os.environ)
_real_getitem = vars(_Environ)["__getitem__"]
_real_setitem = vars(_Environ)["__setitem__"]
_real_delitem = vars(_Environ)["__delitem__"]
_real_iter = vars(_Environ)["__iter__"]
_real_len = vars(_Environ)["__len__"]
_ABSENT: Any = object()
_GETENV = os.getenv.__code__  # os.getenv calls get: the read is its caller's
NAMES_KEY = "=names"  # the recorded set of names; os.environ refuses a name with "=" in it, so none collides
NAMES_CALL = f"env {NAMES_KEY}"


def _live(environ: Any, key: Any) -> Any:
    try:
        return _real_getitem(environ, key)
    except KeyError:
        return _ABSENT


def _present(read: tuple[str, str, str | None]) -> dict[str, Any]:
    key, value, by = read
    data = {"key": key, "present": True, "value": value}
    if by is not None:
        data["reader"] = by
    return data


def _read(scope: Scope, environ: Any, key: Any, frame: FrameType) -> Any:
    """The value the code sees (or `_ABSENT`) for a read whose caller frame is `frame`: at replay, or the
    execution's first read of `key` (the callers answer later reads themselves, from `env_seen`)."""
    if scope.session is not None:
        return _replay_read(scope, environ, key, frame)
    if type(key) is not str:  # os.environ will refuse it
        return _live(environ, key)
    seen = scope.recording.env_seen
    try:  # _live, inlined
        value = _real_getitem(environ, key)
    except KeyError:
        value = _ABSENT
    try:
        seen.add(key)
        code = frame.f_code
        known = verdicts.get(id(code))
        if known is not None and known[0] is code and known[1] == APP:  # read_site's common case, inlined
            site: SiteRef | str = (known[2], code, frame.f_lasti)
            by = None
        else:
            site, by = read_site(frame)
        if value is _ABSENT:
            here = scope.here()
            event = here.recording.add(KIND, f"env {key}", here.path, site, {} if by is None else {"reader": by})
            event.error = {"type": "builtins:KeyError", "message": repr(key), "key": key, "present": False}
        else:
            append_value(scope, KIND, f"env {key}", site, _present, (key, value, by))
    except Exception as exc:
        report_internal_error("env capture", exc)
    return value


def _replay_read(scope: Scope, environ: Any, key: Any, frame: FrameType) -> Any:
    """Replay: the recorded value (or absence), whatever the environment holds now."""
    session = scope.session
    assert session is not None
    if type(key) is not str or key in session.env_written:
        return _live(environ, key)
    reading, by = read_by(frame)
    here = scope.here()
    event = session.env_read(key, here.path, reading, lenient=by is not None)
    if event is None:  # a library's own read of a setting the recording lacks (read and cached before capture)
        return _live(environ, key)
    recording = here.recording
    if key not in recording.env_seen:  # the replayed execution's events mirror the capture's: one per key
        recording.env_seen.add(key)
        recording.add(KIND, f"env {key}", here.path, _site(reading), {})
    data = event["data"]
    if not data.get("present", "error" not in event):
        return _ABSENT
    return data["value"]


def _site(frame: FrameType | None) -> SiteRef | str:
    return site_ref(frame) if frame is not None else "?:?:0"


def _names(walk: tuple[tuple[str, ...], str | None]) -> dict[str, Any]:
    names, by = walk
    data = {"key": NAMES_KEY, "present": True, "value": list(names)}
    if by is not None:
        data["reader"] = by
    return data


def _record_names(scope: Scope, environ: Any, frame: FrameType) -> None:
    """The first walk of the environment in this execution: record the names it holds now."""
    try:
        scope.recording.env_seen.add(NAMES_KEY)
        names = tuple(_real_iter(environ))
        site, by = read_site(frame)
        append_value(scope, KIND, NAMES_CALL, site, _names, (names, by))
    except Exception as exc:
        report_internal_error("env capture", exc)


def _replay_names(scope: Scope, environ: Any, frame: FrameType) -> list[str]:
    """Replay: the names the walk saw at capture, with what the replayed code set or deleted since."""
    session = scope.session
    assert session is not None
    caller, by = read_by(frame)
    here = scope.here()
    event = session.env_read(NAMES_KEY, here.path, caller, lenient=True)
    if event is None:
        if by is not None:
            return list(_real_iter(environ))  # a library's walk the capture did not see: answered live
        hint = (
            "  the code walks the environment (iterates os.environ, its keys, items or copy, or takes its len), "
            "which it did not do when this execution was captured, so the recording holds no set of names"
        )
        raise session.diverge(KIND, NAMES_CALL, here.path, caller, [], None, hint=hint)
    recording = here.recording
    if NAMES_KEY not in recording.env_seen:  # the replayed execution's events mirror the capture's
        recording.env_seen.add(NAMES_KEY)
        recording.add(KIND, NAMES_CALL, here.path, _site(caller), {})
    names = [str(name) for name in event["data"]["value"]]
    for key in sorted(session.env_written):  # set or deleted by the replayed code: as it is now
        if _live(environ, key) is _ABSENT:
            if key in names:
                names.remove(key)
        elif key not in names:
            names.append(key)
    return names


def _iter(self: Any) -> Any:
    """`iter(os.environ)` (and so `.keys()`, `.items()`, `.copy()`, `dict(...)`): the set of names is a read."""
    scope = current()
    if scope is not None and self is os.environ:
        if scope.session is not None:
            return iter(_replay_names(scope, self, _getframe(1)))
        if NAMES_KEY not in scope.recording.env_seen:
            _record_names(scope, self, _getframe(1))
    return _real_iter(self)


def _len(self: Any) -> int:
    scope = current()
    if scope is not None and self is os.environ:
        if scope.session is not None:
            return len(_replay_names(scope, self, _getframe(1)))
        if NAMES_KEY not in scope.recording.env_seen:
            _record_names(scope, self, _getframe(1))
    return _real_len(self)  # type: ignore[no-any-return]


@functools.wraps(_real_getitem)
def _getitem(self: Any, key: Any) -> Any:
    """`_Environ.__getitem__` while installed: written out rather than through `wrap_method`, since env
    reads are frequent and each layer of call costs on the request path."""
    scope = current()
    if scope is None or self is not os.environ:
        return _real_getitem(self, key)
    if scope.session is None and key in scope.recording.env_seen:  # the common case: read already
        return _real_getitem(self, key)
    value = _read(scope, self, key, _getframe(1))
    if value is _ABSENT:
        raise KeyError(key)
    return value


def _get(self: Any, key: Any, default: Any = None) -> Any:
    """`os.environ.get` while installed: `Mapping.get` without its frame and its trip through `__getitem__`."""
    scope = current()
    if scope is None or self is not os.environ or (scope.session is None and key in scope.recording.env_seen):
        value = _live(self, key)
    else:
        frame = _getframe(1)
        value = _read(scope, self, key, (frame.f_back or frame) if frame.f_code is _GETENV else frame)
    return default if value is _ABSENT else value


def _contains(self: Any, key: Any) -> bool:
    """`key in os.environ` while installed: a read like any other (present, or recorded as absent)."""
    scope = current()
    if scope is None or self is not os.environ:
        return _live(self, key) is not _ABSENT
    if scope.session is None and key in scope.recording.env_seen:
        return _live(self, key) is not _ABSENT
    return _read(scope, self, key, _getframe(1)) is not _ABSENT


def _written(key: Any) -> None:
    scope = current()
    if scope is not None and scope.session is not None:
        scope.session.env_written.add(key)


@functools.wraps(_real_setitem)
def _setitem(self: Any, key: Any, value: Any) -> None:
    """`os.environ[key] = value`: at replay, later reads of `key` see what the code set, as at capture."""
    if self is os.environ:
        _written(key)
    _real_setitem(self, key, value)


@functools.wraps(_real_delitem)
def _delitem(self: Any, key: Any) -> None:
    if self is os.environ:
        _written(key)
    _real_delitem(self, key)


class EnvInterceptor:
    kind = KIND

    def __init__(self) -> None:
        self._getitem = _getitem

    def patches(self) -> list[Patch]:
        return [
            Patch(_Environ, "__getitem__", self._getitem),
            Patch(_Environ, "get", _get),
            Patch(_Environ, "__contains__", _contains),
            Patch(_Environ, "__iter__", _iter),
            Patch(_Environ, "__len__", _len),
            Patch(_Environ, "__setitem__", _setitem),
            Patch(_Environ, "__delitem__", _delitem),
        ]

    def rebind(self) -> dict[int, Any]:
        return {}
