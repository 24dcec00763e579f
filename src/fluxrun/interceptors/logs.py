"""Log records emitted while an execution runs, from any logger but FluxRun's own.

Recorded at `Logger.handle`, after the logger's level and filters, so what is kept is what the
app's handlers would see. Handlers run with capture suspended: their IO is logging's, not the app's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fluxrun._context import Scope, current, scope_var
from fluxrun._internal import report_internal_error
from fluxrun.interceptors.base import Patch, wrap_method

__all__ = ["LogsInterceptor"]

KIND = "log"


def _record(scope: Scope, record: logging.LogRecord) -> None:
    here = scope.here()
    data: dict[str, Any] = {
        "logger": record.name,
        "level": record.levelname,
        "message": record.getMessage(),
        "file": record.pathname,
        "line": record.lineno,
    }
    if record.exc_info and record.exc_info[0] is not None:
        data["exc_type"] = record.exc_info[0].__qualname__
    site = f"{record.module}:{record.funcName}:{record.lineno}"
    here.recording.add(KIND, f"{record.levelname} {record.name}", here.path, site, data)


def _handle_wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    scope = current()
    if scope is None:
        return wrapped(*args, **kwargs)
    try:
        record: logging.LogRecord = args[0]
        if record.name != "fluxrun" and not record.name.startswith("fluxrun."):
            _record(scope, record)
    except Exception as exc:
        report_internal_error("log capture", exc)
    token = scope_var.set(None)
    try:
        return wrapped(*args, **kwargs)
    finally:
        scope_var.reset(token)


class LogsInterceptor:
    kind = KIND

    def __init__(self) -> None:
        self._handle = wrap_method(vars(logging.Logger)["handle"], _handle_wrapper)

    def patches(self) -> list[Patch]:
        return [Patch(logging.Logger, "handle", self._handle)]

    def rebind(self) -> dict[int, Any]:
        return {}
