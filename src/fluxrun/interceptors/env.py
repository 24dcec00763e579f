"""Env reads: `os.environ[...]`, `os.environ.get` and `os.getenv` all end in `_Environ.__getitem__`.

At replay a read returns the recorded value even if the environment has changed since; the
recording is a snapshot, so a variable read once and read again is answered both times.

A read of a missing variable is recorded as absent (the KeyError `get` swallows), because "not set"
is as much a part of what the code saw as a value.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import wrapt

from fluxrun._context import Scope, current
from fluxrun._internal import caller_frame, frame_is_stdlib, site_of
from fluxrun.interceptors.base import Patch, record_call

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
    return record_call(
        scope,
        KIND,
        f"env {key}",
        wrapped,
        args,
        kwargs,
        lambda value: {"key": key, "present": True, "value": value},
        on_error=lambda exc: (
            {"type": "builtins:KeyError", "message": str(exc), "key": key, "present": False}
            if isinstance(exc, KeyError)
            else {"type": type(exc).__qualname__, "message": str(exc)}
        ),
    )


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
        self._getitem = wrapt.FunctionWrapper(vars(_Environ)["__getitem__"], _getitem_wrapper)

    def patches(self) -> list[Patch]:
        return [Patch(_Environ, "__getitem__", self._getitem)]

    def rebind(self) -> dict[int, Any]:
        return {}
