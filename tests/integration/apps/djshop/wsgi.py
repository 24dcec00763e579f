"""Django's WSGI application wrapped by FluxRun, as a project's wsgi.py would do it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djshop.settings")

from django.core.wsgi import get_wsgi_application

import fluxrun

if os.environ.get("FLUXRUN_CAPTURE_KEY"):
    fluxrun.init()  # FLUXRUN_CAPTURE_KEY and FLUXRUN_DIR come from the environment; a replay imports it bare

application = get_wsgi_application()
application = fluxrun.FluxRunWSGIMiddleware(application)  # the module attribute is the middleware


def fixed_application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """What the fixed view answers, as a guard's entry point."""
    start_response("200 OK", [("content-type", "application/json")])
    return [b'{"total": 0}']
