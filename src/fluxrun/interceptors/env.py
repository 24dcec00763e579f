"""Env reads: `os.environ[...]`, `os.environ.get` and `os.getenv` all end in `_Environ.__getitem__`.

At replay a read returns the recorded value even if the environment has changed since; the
recording is a snapshot, so a variable read once and read again is answered both times.

A read of a missing variable is recorded as absent (the KeyError `get` swallows), because "not set"
is as much a part of what the code saw as a value.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from types import FrameType
from typing import Any

from fluxrun._context import Scope, current
from fluxrun._internal import app_caller, caller_frame, frame_is_stdlib, report_internal_error, site_of, site_ref
from fluxrun.interceptors.base import Patch, wrap_method

__all__ = ["EnvInterceptor"]

KIND = "env"
_Environ = type(os.environ)


def _getitem_wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    scope = current()
    if scope is None or instance is not os.environ:
        return wrapped(*args, **kwargs)
    key = args[0]
    if scope.session is not None:
        return _replay_read(scope, key, wrapped, args, kwargs)
    frame = app_caller(1)
    if frame is None:
        return wrapped(*args, **kwargs)
    try:
        value = wrapped(*args, **kwargs)  # a dict lookup: no IO of its own, nothing to suspend
    except KeyError:
        _record(scope, key, frame, None)
        raise
    _record(scope, key, frame, value)
    return value


def _record(scope: Scope, key: str, frame: FrameType, value: str | None) -> None:
    try:
        here = scope.here()
        if value is None:
            event = here.recording.add(KIND, f"env {key}", here.path, site_ref(frame), {})
            event.error = {"type": "builtins:KeyError", "message": repr(key), "key": key, "present": False}
        else:
            here.recording.add(
                KIND, f"env {key}", here.path, site_ref(frame), {"key": key, "present": True, "value": value}
            )
    except Exception as exc:
        report_internal_error("env capture", exc)


def _replay_read(
    scope: Scope, key: str, wrapped: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Replay: the recorded value (or absence), whatever the environment holds now."""
    frame = caller_frame(3)
    if frame is None or frame_is_stdlib(frame):
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
        self._getitem = wrap_method(vars(_Environ)["__getitem__"], _getitem_wrapper)

    def patches(self) -> list[Patch]:
        return [Patch(_Environ, "__getitem__", self._getitem)]

    def rebind(self) -> dict[int, Any]:
        return {}
