"""Block the live world while a replay runs: no socket connects, no DNS lookups.

Replay answers every intercepted call from the recording; anything that still tries the network
(a client FluxRun does not intercept, a forgotten boundary) is stopped with `LiveIOBlocked`, naming
the host and the app's line, instead of quietly reaching a real system.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from typing import Any

from fluxrun._internal import InApp, is_fluxrun_file, is_stdlib_file
from fluxrun._platform import warm_platform_probe
from fluxrun.errors import LiveIOBlocked
from fluxrun.interceptors.base import Patch, Patcher
from fluxrun.replay.processes import process_patches

__all__ = ["ADVICE", "blocked_error", "blocking_sockets", "lookup_error"]

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


ADVICE = (
    "FluxRun records and serves httpx, requests, urllib3, aiohttp, sqlite3, psycopg, psycopg2, asyncpg, redis-py "
    "commands and pipelines (RedisCluster's too), smtplib and aiosmtplib; this call went around them (another "
    "client, or a part of one that is not intercepted, such as Redis pub/sub or psycopg's COPY). Declare it with "
    "@fluxrun.boundary, or add an interceptor for its client (docs/interceptors.md), so that it is recorded and "
    "served."
)


def blocked_error(host: object, what: str, shown: object = None) -> LiveIOBlocked:
    """The error for one blocked attempt, told to every replay listening (so a swallowed one still fails it).
    `shown`: the target as the message names it (`host:port`), when not just the host."""
    where = _app_line()
    error = LiveIOBlocked(
        f"replay blocked a {what} {host if shown is None else shown} made at {where}: replay never reaches live "
        f"systems. {ADVICE}",
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


def lookup_error(host: Any, port: Any = None) -> LiveIOBlocked:
    """A blocked `getaddrinfo(host, port)`: for an address (no name to look up) the connection it prepares."""
    text = host.decode("ascii", "replace") if isinstance(host, (bytes, bytearray)) else str(host)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return blocked_error(text, "DNS lookup of")
    shown = (f"[{text}]" if ":" in text else text) + (f":{port}" if port not in (None, "", b"") else "")
    return blocked_error(text, "connection to", shown)


def _getaddrinfo(host: Any, port: Any = None, *args: Any, **kwargs: Any) -> Any:
    raise lookup_error(host, port)


def _gethostbyname(host: Any, *args: Any) -> Any:
    raise blocked_error(host, "DNS lookup of")


def _gethostbyaddr(address: Any) -> Any:
    raise blocked_error(address, "reverse DNS lookup of")


def _getnameinfo(address: Any, *args: Any) -> Any:
    raise blocked_error(address[0] if isinstance(address, tuple) and address else address, "reverse DNS lookup of")


def _getfqdn(name: str = "") -> str:
    """This host's own name needs no lookup (`email.utils.make_msgid()` and smtplib ask for it): it is answered
    with `gethostname()`, in every isolation mode. Any other name is a reverse lookup, and blocked."""
    stripped = name.strip()
    local = socket.gethostname()
    if not stripped or stripped in ("0.0.0.0", "::") or stripped == local:
        return local
    return _real_getfqdn(name)


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getfqdn = socket.getfqdn


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
                    Patch(socket, "gethostbyname", _gethostbyname),
                    Patch(socket, "gethostbyname_ex", _gethostbyname),
                    Patch(socket, "gethostbyaddr", _gethostbyaddr),
                    Patch(socket, "getnameinfo", _getnameinfo),
                    Patch(socket, "getfqdn", _getfqdn),
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
