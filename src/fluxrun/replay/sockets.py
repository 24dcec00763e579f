"""Block the live world while a replay runs: no socket connects, no DNS lookups.

Replay answers every intercepted call from the recording; anything that still tries the network
(a client FluxRun does not intercept, a forgotten boundary) is stopped with `LiveIOBlocked`, naming
the host and the app's line, instead of quietly reaching a real system.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from fluxrun._internal import InApp, is_fluxrun_file, is_stdlib_file
from fluxrun._platform import warm_platform_probe
from fluxrun.errors import LiveIOBlocked
from fluxrun.interceptors.base import Patch, Patcher
from fluxrun.replay.processes import process_patches

__all__ = ["blocked_error", "blocking_sockets"]

_lock = threading.Lock()
_depth = 0
_patcher = Patcher()
_listeners: list[Any] = []
_in_app = InApp()


def _app_line() -> str:
    import sys

    frame = sys._getframe(2)
    fallback = None
    while frame is not None:
        filename = frame.f_code.co_filename
        if not is_fluxrun_file(filename) and not is_stdlib_file(filename):
            if _in_app.frame(frame):
                return f"{filename}:{frame.f_lineno} in {frame.f_code.co_qualname}"
            fallback = fallback or f"{filename}:{frame.f_lineno} in {frame.f_code.co_qualname}"
        frame = frame.f_back  # type: ignore[assignment]
    return fallback or "an unknown place"


def blocked_error(host: object, what: str) -> LiveIOBlocked:
    """The error for one blocked attempt, told to every replay listening (so a swallowed one still fails it)."""
    where = _app_line()
    error = LiveIOBlocked(
        f"replay blocked a {what} {host} made at {where}: replay never reaches live systems. "
        "Intercept this call (use httpx/httpx2, or declare it with @fluxrun.boundary) so it is recorded and served.",
        host=str(host),
        site=where,
    )
    for listener in list(_listeners):
        listener(error)
    return error


def _connect(self: socket.socket, address: Any, *args: Any) -> Any:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        raise blocked_error(address[0] if isinstance(address, tuple) else address, "connection to")
    return _real_connect(self, address, *args)


def _connect_ex(self: socket.socket, address: Any, *args: Any) -> Any:
    if self.family in (socket.AF_INET, socket.AF_INET6):
        raise blocked_error(address[0] if isinstance(address, tuple) else address, "connection to")
    return _real_connect_ex(self, address, *args)


def _getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    raise blocked_error(host, "DNS lookup of")


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


class blocking_sockets:
    """Install the blocks for the duration of a replay (nested and concurrent replays share them)."""

    def __init__(self, on_block: Any = None) -> None:
        self.on_block = on_block

    def __enter__(self) -> blocking_sockets:
        global _depth
        with _lock:
            if self.on_block is not None:
                _listeners.append(self.on_block)
            if _depth == 0:
                warm_platform_probe()  # the stdlib's cached `uname -p`, asked before processes are blocked
                for patch in (
                    Patch(socket.socket, "connect", _connect),
                    Patch(socket.socket, "connect_ex", _connect_ex),
                    Patch(socket, "getaddrinfo", _getaddrinfo),
                    *process_patches(),  # and no process starts (replay/processes.py)
                ):
                    _patcher.apply(patch)
            _depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        global _depth
        with _lock:
            if self.on_block is not None and self.on_block in _listeners:
                _listeners.remove(self.on_block)
            _depth -= 1
            if _depth == 0:
                _patcher.restore()
