"""One shared installation of every interceptor, counted: capture (`fluxrun.init`) and replay both use it.

The patches are the same for recording and replaying; what a wrapper does depends on the scope it
finds in the context variable. The last user to release the installation restores every original.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from fluxrun._internal import InApp, report_internal_error
from fluxrun.interceptors.base import Interceptor, Patch, Patcher
from fluxrun.interceptors.clock import ClockInterceptor
from fluxrun.interceptors.env import EnvInterceptor
from fluxrun.interceptors.http import HttpInterceptor
from fluxrun.interceptors.logs import LogsInterceptor
from fluxrun.interceptors.randomness import RandomnessInterceptor
from fluxrun.interceptors.threads import ThreadsInterceptor
from fluxrun.interceptors.timers import TimersInterceptor

__all__ = ["Installation", "acquire", "release"]

DEFAULT_BODY_LIMIT = 1 << 20


class Installation:
    def __init__(self, in_app: InApp) -> None:
        self.in_app = in_app
        self.body_limit = DEFAULT_BODY_LIMIT
        self.patcher = Patcher()
        self.interceptors: list[Interceptor] = [
            ClockInterceptor(),
            TimersInterceptor(),
            RandomnessInterceptor(),
            EnvInterceptor(),
            LogsInterceptor(),
            HttpInterceptor(lambda: self.body_limit),
            ThreadsInterceptor(),
        ]
        self._rebind: dict[int, Any] = {}
        self._scanned: set[str] = set()
        self.modules_seen = 0
        self._scan_lock = threading.Lock()

    def apply(self) -> None:
        for interceptor in self.interceptors:
            self._rebind.update(interceptor.rebind())
        for interceptor in self.interceptors:
            for patch in interceptor.patches():
                self.patcher.apply(patch)
        self.rescan()

    def rescan_if_needed(self) -> None:
        if len(sys.modules) != self.modules_seen:
            self.rescan()

    def rescan(self) -> None:
        """Rebind `from time import time`-style names in the app's own modules (new ones only)."""
        with self._scan_lock:
            modules = list(sys.modules.items())
            self.modules_seen = len(modules)
            for name, module in modules:
                if name in self._scanned or module is None:
                    continue
                self._scanned.add(name)
                if not self.in_app.module(name, getattr(module, "__file__", None)):
                    continue
                try:
                    for attr, value in list(vars(module).items()):
                        replacement = self._rebind.get(id(value))
                        if replacement is not None and not attr.startswith("__"):
                            self.patcher.apply(Patch(module, attr, replacement))
                except Exception as exc:
                    report_internal_error(f"rebinding names in {name}", exc)

    def restore(self) -> None:
        self.patcher.restore()


_lock = threading.Lock()
_installation: Installation | None = None
_users = 0


def acquire(in_app: InApp) -> Installation:
    """Install the interceptors if nobody has yet; count this user either way."""
    global _installation, _users
    with _lock:
        if _installation is None:
            installation = Installation(in_app)
            installation.apply()
            _installation = installation
        _users += 1
        return _installation


def release() -> None:
    global _installation, _users
    with _lock:
        _users = max(0, _users - 1)
        if _users == 0 and _installation is not None:
            _installation.restore()
            _installation = None


def current_installation() -> Installation | None:
    return _installation
