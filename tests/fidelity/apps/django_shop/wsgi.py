"""The project's WSGI module, as `startproject` writes it, with the FluxRun middleware around the handler.

Run as `gunicorn django_shop.wsgi:application`. `fluxrun.init()` runs where this module is imported: in the
gunicorn master with `--preload`, so the capture must keep working in the forked worker.
"""

import os
from typing import Any

from django.core.handlers.wsgi import WSGIHandler
from django.core.wsgi import get_wsgi_application

import fluxrun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_shop.settings")
fluxrun.init()  # FLUXRUN_CAPTURE_KEY and FLUXRUN_DIR come from the environment

application = fluxrun.FluxRunWSGIMiddleware(get_wsgi_application())  # replay must find `application` by itself


class _FixedHandler(WSGIHandler):
    """The project with the fix deployed: each request resolved against `urls_fixed`."""

    def get_response(self, request: Any) -> Any:
        request.urlconf = "django_shop.urls_fixed"
        return super().get_response(request)


fixed_application = fluxrun.FluxRunWSGIMiddleware(_FixedHandler())
