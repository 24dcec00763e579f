"""Env reads: `os.environ[...]`, `os.environ.get` and `os.getenv` all end in `_Environ.__getitem__`.

A read of a missing variable is recorded as absent (the KeyError `get` swallows), because "not set"
is as much a part of what the code saw as a value.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import wrapt

from fluxrun._context import current
from fluxrun.interceptors.base import Patch, record_call

__all__ = ["EnvInterceptor"]

KIND = "env"
_Environ = type(os.environ)


def _getitem_wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    scope = current()
    if scope is None or instance is not os.environ:
        return wrapped(*args, **kwargs)
    key = args[0]
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


class EnvInterceptor:
    kind = KIND

    def __init__(self) -> None:
        self._getitem = wrapt.FunctionWrapper(vars(_Environ)["__getitem__"], _getitem_wrapper)

    def patches(self) -> list[Patch]:
        return [Patch(_Environ, "__getitem__", self._getitem)]

    def rebind(self) -> dict[int, Any]:
        return {}
