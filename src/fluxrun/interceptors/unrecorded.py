"""IO that FluxRun does not record: noted at capture, so a bundle says it is not replay-ready up front.

A socket the app opens without an intercepted client (a driver FluxRun does not know, a statsd
datagram) or a process it spawns cannot be served at replay: the replay would stop with
`LiveIOBlocked`. Rather than finding that out in CI, the capture notes each such call as an event of
kind "unrecorded" (once per target and execution), and the summary says "not replay-ready: 1 connection
to 127.0.0.1:5432 was not recorded". IO made inside an intercepted call (an httpx pool's own connect)
belongs to that call and is not noted. Only Python-level calls are seen: a C extension's own sockets
(libpq) are not, which is why drivers are intercepted at the driver level.

The patched methods cost nothing per request: they run only when a socket connects or a process starts.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
from collections.abc import Callable
from typing import Any

from fluxrun._context import current
from fluxrun._internal import caller_site, report_internal_error
from fluxrun.errors import LiveIOBlocked
from fluxrun.interceptors.base import Patch

__all__ = ["KIND", "UnrecordedInterceptor", "refusal", "refuse_or_note", "unrecorded_method"]

KIND = "unrecorded"
_NETWORK = (socket.AF_INET, socket.AF_INET6, getattr(socket, "AF_UNIX", -1))


def _target(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return f"{address[0]}:{address[1]}"
    if isinstance(address, bytes):
        return address.decode("utf-8", "replace")
    return str(address)


def _note(what: str, target: str) -> None:
    """Add one "unrecorded" event to the execution being captured (not at replay, not inside a recorded call)."""
    scope = current()
    if scope is None or scope.session is not None:
        return
    try:
        call = f"{what} {target}"
        here = scope.here()
        log = here.recording.log
        if any(_is_note(entry, call) for entry in log):
            return
        here.recording.add(KIND, call, here.path, caller_site(3), {"what": what, "target": target})
    except Exception as exc:
        report_internal_error("noting unrecorded IO", exc)


def refusal(what: str, target: str, why: str) -> LiveIOBlocked:
    """The error for a client's call that FluxRun does not record (`what`: "sqlite3 blobopen"), at replay."""
    article = "an" if what[:1].lower() in "aeiou" else "a"
    return LiveIOBlocked(
        f"replay blocked {article} {what} call ({target}): {why}, so it is not recorded and cannot be served. "
        "Declare the code around it with @fluxrun.boundary, so that its result is recorded and served."
    )


def refuse_or_note(what: str, target: str, why: str) -> None:
    """A client's call that FluxRun does not record (sqlite3's `blobopen`, psycopg's COPY): refused at replay,
    where it would reach the live system, and noted at capture, so the bundle says it is not replay-ready.
    Called by the patched method itself: the note's site is that method's caller."""
    scope = current()
    if scope is None:
        return
    if scope.session is not None:
        raise refusal(what, target, why)
    _note(what, target)


def unrecorded_method(original: Callable[..., Any], what: str, target: str, why: str) -> Callable[..., Any]:
    """`original` (a method) behind `refuse_or_note`."""

    @functools.wraps(original)
    def unrecorded(self: Any, *args: Any, **kwargs: Any) -> Any:
        refuse_or_note(what, target, why)
        return original(self, *args, **kwargs)

    return unrecorded


def _is_note(entry: Any, call: str) -> bool:
    return getattr(entry, "kind", None) == KIND and getattr(entry, "call", None) == call


def _socket_method(original: Callable[..., Any], what: str) -> Callable[..., Any]:
    def method(self: socket.socket, address: Any, *args: Any) -> Any:
        if self.family in _NETWORK:
            _note(what, _target(address))
        return original(self, address, *args)

    method.__wrapped__ = original  # type: ignore[attr-defined]
    return method


def _sendto(original: Callable[..., Any]) -> Callable[..., Any]:
    def sendto(self: socket.socket, data: Any, *args: Any) -> Any:
        if args and self.family in _NETWORK:
            _note("datagram to", _target(args[-1]))
        return original(self, data, *args)

    sendto.__wrapped__ = original  # type: ignore[attr-defined]
    return sendto


def _popen_init(original: Callable[..., Any]) -> Callable[..., Any]:
    def __init__(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        command = args if isinstance(args, (str, bytes)) else (list(args)[:1] or ["?"])[0]
        _note("process", os.fsdecode(command) if isinstance(command, (str, bytes)) else str(command))
        original(self, args, *rest, **kwargs)

    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    return __init__


def _system(original: Callable[..., Any]) -> Callable[..., Any]:
    def system(command: Any) -> int:
        _note("shell command", os.fsdecode(command) if isinstance(command, (str, bytes)) else str(command))
        return int(original(command))

    system.__wrapped__ = original  # type: ignore[attr-defined]
    return system


class UnrecordedInterceptor:
    kind = KIND

    def patches(self) -> list[Patch]:
        return [
            Patch(socket.socket, "connect", _socket_method(socket.socket.connect, "connection to")),
            Patch(socket.socket, "connect_ex", _socket_method(socket.socket.connect_ex, "connection to")),
            Patch(socket.socket, "sendto", _sendto(socket.socket.sendto)),
            Patch(subprocess.Popen, "__init__", _popen_init(subprocess.Popen.__init__)),
            Patch(os, "system", _system(os.system)),
        ]

    def rebind(self) -> dict[int, Any]:
        return {}
