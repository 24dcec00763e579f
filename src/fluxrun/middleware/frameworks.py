"""Exceptions a framework turns into its own 500 answer (Flask, Django, Litestar), and the route template.

Starlette and FastAPI let an exception raise through the FluxRun middleware; these frameworks catch it and
answer 500 themselves, so the middleware would see only a status. Each has a signal or hook for the caught
exception; FluxRun listens there and notes the exception on the current execution. When the answer is a 5xx,
the middleware records it as the execution's error (type, message, frames, fingerprint), so a replay that
fails the same way is "reproduced", not just "the same status". During a replay the same hook notes the new
exception, for the replay to compare.
"""

from __future__ import annotations

import sys
from typing import Any

from fluxrun._context import scope_var
from fluxrun._internal import report_internal_error

__all__ = ["HANDLED", "hook_frameworks", "hook_litestar", "take_handled"]

HANDLED = "handled_exception"  # outcome key: the exception a framework caught, until the middleware decides
ROUTE = "fluxrun.route"  # WSGI environ key: the route template, read by the WSGI middleware

_hooked: set[str] = set()


def note_handled(exc: BaseException | None, route: str | None = None, environ: Any = None) -> None:
    """Note on the current execution (capture or replay) an exception the framework turned into an answer."""
    try:
        scope = scope_var.get()
        if scope is None or exc is None:
            return
        scope.recording.outcome[HANDLED] = exc
        if route and isinstance(environ, dict):
            environ[ROUTE] = route
    except Exception as internal:
        report_internal_error("noting an exception the framework handled", internal)


def take_handled(outcome: dict[str, Any]) -> BaseException | None:
    """The exception a framework handled during this execution, removed from the outcome (never exported)."""
    exc = outcome.pop(HANDLED, None)
    return exc if isinstance(exc, BaseException) else None


def _flask_exception(sender: Any, exception: BaseException | None = None, **extra: Any) -> None:
    request = sys.modules["flask"].request
    rule = request.url_rule
    note_handled(exception, getattr(rule, "rule", None), request.environ)


def _flask_started(sender: Any, **extra: Any) -> None:
    """The matched rule (`/orders/<int:order_id>`) for every request, so a plain 5xx answer has it too."""
    scope = scope_var.get()
    if scope is None:
        return
    try:
        request = sys.modules["flask"].request
        rule = request.url_rule
        if rule is not None:
            request.environ[ROUTE] = rule.rule
    except Exception as internal:
        report_internal_error("reading the Flask route", internal)


def _django_exception(sender: Any, request: Any = None, **extra: Any) -> None:
    exc = sys.exc_info()[1]  # Django sends the signal inside its `except` block
    match = getattr(request, "resolver_match", None)
    route = getattr(match, "route", None)
    note_handled(exc, f"/{route.lstrip('/')}" if isinstance(route, str) else None, getattr(request, "environ", None))


def hook_frameworks() -> None:
    """Listen to the exception signals of the WSGI frameworks already imported (once each)."""
    flask = sys.modules.get("flask")
    if flask is not None and "flask" not in _hooked:
        _hooked.add("flask")
        flask.got_request_exception.connect(_flask_exception, weak=False)
        flask.request_started.connect(_flask_started, weak=False)
    signals = sys.modules.get("django.core.signals")
    if signals is not None and "django" not in _hooked:
        _hooked.add("django")
        signals.got_request_exception.connect(_django_exception, weak=False, dispatch_uid="fluxrun")


async def _litestar_exception(exc: Exception, scope: Any) -> None:
    note_handled(exc)


def hook_litestar(app: Any) -> bool:
    """Add FluxRun's `after_exception` hook to a Litestar app (read per exception, so adding it later works).
    True when `app` is a Litestar app."""
    litestar = sys.modules.get("litestar.app")
    cls = vars(litestar).get("Litestar") if litestar is not None else None
    if not isinstance(cls, type) or not isinstance(app, cls):
        return False
    hooks: Any = getattr(app, "after_exception", None)  # a Litestar app's own hook list (checked type above)
    if isinstance(hooks, list) and _litestar_exception not in hooks:
        hooks.append(_litestar_exception)
    return True
