"""Log records emitted while an execution runs, from any logger but FluxRun's own.

Recorded at `Logger.handle`, after the logger's level and filters, so what is kept is what the
app's handlers would see. Handlers run with capture suspended: their IO is logging's, not the app's.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from fluxrun._context import Scope, current, scope_var
from fluxrun._internal import report_internal_error
from fluxrun.interceptors.base import Patch
from fluxrun.interceptors.hot_path import append_value

__all__ = ["LogsInterceptor"]

KIND = "log"


def _record(scope: Scope, record: logging.LogRecord) -> None:
    exc_info = record.exc_info
    # A snapshot of the record's fields (strings and ints): handlers may change the record afterwards.
    fields = (
        record.name,
        record.levelname,
        record.getMessage(),
        record.pathname,
        record.lineno,
        exc_info[0].__qualname__ if exc_info and exc_info[0] is not None else None,
    )
    site = f"{record.module}:{record.funcName}:{record.lineno}"
    call = f"{fields[1]} {fields[0]}"
    append_value(scope, KIND, call, site, _log_data, fields)


def _log_data(fields: tuple[str, str, str, str, int, str | None]) -> dict[str, Any]:
    name, level, message, path, line, exc_type = fields
    data: dict[str, Any] = {"logger": name, "level": level, "message": message, "file": path, "line": line}
    if exc_type is not None:
        data["exc_type"] = exc_type
    return data


_real_handle = vars(logging.Logger)["handle"]


@functools.wraps(_real_handle)
def _handle(self: logging.Logger, record: logging.LogRecord) -> Any:
    """`Logger.handle` while installed (written out rather than through `wrap_method`: one call less)."""
    scope = current()
    if scope is None:
        return _real_handle(self, record)
    try:
        if record.name != "fluxrun" and not record.name.startswith("fluxrun."):
            _record(scope, record)
    except Exception as exc:
        report_internal_error("log capture", exc)
    token = scope_var.set(None)
    try:
        return _real_handle(self, record)
    finally:
        scope_var.reset(token)


class LogsInterceptor:
    kind = KIND

    def __init__(self) -> None:
        self._handle = _handle

    def patches(self) -> list[Patch]:
        return [Patch(logging.Logger, "handle", self._handle)]

    def rebind(self) -> dict[int, Any]:
        return {}
