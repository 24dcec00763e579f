"""FluxRun: turn one production failure into a fix and a regression guard.

Capture what a failing request did into a sealed bundle that only the app's owner can open::

    import fluxrun
    fluxrun.init(capture_key="keys/capture.key")   # or FLUXRUN_CAPTURE_KEY
    app.add_middleware(fluxrun.FluxRunMiddleware)
"""

from fluxrun import replay
from fluxrun._api import flush, init, shutdown, stats
from fluxrun._capture import capture
from fluxrun._version import __version__
from fluxrun.errors import BundleError, ConfigError, FluxRunError, KeyFileError, LiveIOBlocked, ReplayDivergence
from fluxrun.interceptors.host import boundary
from fluxrun.middleware.asgi import FluxRunMiddleware
from fluxrun.middleware.wsgi import FluxRunWSGIMiddleware

__all__ = [
    "BundleError",
    "ConfigError",
    "FluxRunError",
    "FluxRunMiddleware",
    "FluxRunWSGIMiddleware",
    "KeyFileError",
    "LiveIOBlocked",
    "ReplayDivergence",
    "__version__",
    "boundary",
    "capture",
    "flush",
    "init",
    "replay",
    "shutdown",
    "stats",
]
