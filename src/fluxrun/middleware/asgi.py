"""`FluxRunMiddleware`: capture each HTTP request of an ASGI app (FastAPI, Starlette, ...).

A pure ASGI middleware (not `BaseHTTPMiddleware`), so it adds no task and streams untouched:
it records the request as it is received and the response as it is sent, up to the body limit.
Add it with `app.add_middleware(FluxRunMiddleware)` or wrap any ASGI app: `FluxRunMiddleware(app)`.

Most requests succeed and are not kept, so the request path only takes references and small
snapshots (the scope's fields, the header list, the body chunks as sent); the recorded request and
response are assembled after the app has answered, and only when the execution is kept.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fluxrun._capture import record_error
from fluxrun._client import begin, end
from fluxrun._internal import report_internal_error
from fluxrun.middleware.frameworks import HANDLED, hook_frameworks, hook_litestar, take_handled
from fluxrun.middleware.request import declare_entry, find_entry, mark_entry
from fluxrun.model.recording import Recording

__all__ = ["FluxRunMiddleware"]

Scope = dict[str, Any]


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            return value not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


class _Exchange:
    """One request's recording state: what was received and sent, kept as taken (references to bytes)."""

    __slots__ = (
        "headers",
        "limit",
        "receive_",
        "recording",
        "request_body",
        "request_done",
        "request_size",
        "response_body",
        "response_headers",
        "response_size",
        "scope",
        "send_",
        "snapshot",
        "status",
    )

    def __init__(self, scope: Scope, receive: Any, send: Any, recording: Recording, limit: int) -> None:
        self.scope = scope
        self.snapshot = scope.copy()  # routing may rewrite path and root_path in place; this is what arrived
        self.headers = list(scope.get("headers") or ())
        self.receive_ = receive
        self.send_ = send
        self.recording = recording
        self.limit = limit
        self.request_body: list[bytes] = []
        self.request_size = 0
        self.request_done = False
        self.status: int | None = None
        self.response_headers: list[Any] = []
        self.response_body: list[bytes] = []
        self.response_size = 0

    async def receive(self) -> Any:
        message = await self.receive_()
        try:
            if message.get("type") == "http.request":
                chunk = message.get("body", b"")
                self.request_body.append(_kept(chunk, self.limit - self.request_size))
                self.request_size += len(chunk)
                self.request_done = not message.get("more_body", False)
            else:
                self.request_done = True
        except Exception as exc:
            report_internal_error("recording an ASGI request body", exc)
        return message

    def send(self, message: Any) -> Any:
        """Record, then hand the server's own awaitable back: no coroutine of ours per message."""
        try:
            kind = message.get("type")
            if kind == "http.response.body":
                chunk = message.get("body", b"")
                if chunk:
                    self.response_body.append(_kept(chunk, self.limit - self.response_size))
                    self.response_size += len(chunk)
            elif kind == "http.response.start":
                self.status = status = message["status"]
                self.response_headers = list(message.get("headers") or [])
                self.recording.outcome["status"] = status
        except Exception as exc:
            report_internal_error("recording an ASGI response", exc)
        return self.send_(message)

    async def drain(self) -> None:
        """A kept execution needs the whole request body for replay, even the part the app never read."""
        if self.request_done or not _has_body(self.scope):
            return
        try:
            while not self.request_done and self.request_size < self.limit:
                if (await asyncio.wait_for(self.receive(), 2.0)).get("type") != "http.request":
                    break
        except Exception as exc:
            report_internal_error("reading the rest of an ASGI request body", exc)

    def finish(self, entry: str | None, middleware: FluxRunMiddleware) -> None:
        """Assemble the recorded request and response (a kept execution only)."""
        try:
            recording, scope, arrived = self.recording, self.scope, self.snapshot
            request: dict[str, Any] = {
                "method": arrived.get("method"),
                "path": arrived.get("path"),
                "root_path": arrived.get("root_path", ""),
                "query_string": arrived.get("query_string", b""),
                "scheme": arrived.get("scheme", "http"),
                "http_version": arrived.get("http_version"),
                "server": list(arrived["server"]) if arrived.get("server") else None,
                "headers": self.headers,  # request id and traceparent are read from these on export
            }
            route = scope.get("route")
            # Starlette's matched route, Litestar's path template, else the path
            request["route"] = getattr(route, "path", None) or scope.get("path_template") or scope.get("path")
            body = b"".join(self.request_body)
            request["body"] = {
                "bytes": body,
                "size": self.request_size,
                **({"truncated": True} if self.request_size > len(body) else {}),
            }
            recording.request = request
            if self.status is not None:
                out = b"".join(self.response_body)
                recording.outcome["response"] = {
                    "status": self.status,
                    "headers": self.response_headers,
                    "body": {
                        "bytes": out,
                        "size": self.response_size,
                        **({"truncated": True} if self.response_size > len(out) else {}),
                    },
                }
            if recording.entry is None:
                # the middleware itself when a module holds it (`app = FluxRunMiddleware(app)`), else the app
                # Starlette added it to (`add_middleware`), else the app it wraps
                recording.entry = entry or find_entry(middleware, scope.get("app"), middleware.app)
        except Exception as exc:
            report_internal_error("finishing an ASGI capture", exc)


def _kept(chunk: bytes, room: int) -> bytes:
    """The part of `chunk` the body limit leaves room for: the chunk itself (bytes do not change) when it fits."""
    if len(chunk) <= room and type(chunk) is bytes:
        return chunk
    return bytes(chunk[: max(room, 0)])


class FluxRunMiddleware:
    def __init__(self, app: Any, *, entry: str | None = None) -> None:
        self.app = app
        self.entry = entry
        mark_entry(self)  # replay may call what this middleware wraps when a bundle names it
        mark_entry(app)
        if entry:
            declare_entry(entry)
        hook_frameworks()
        self.hooked = hook_litestar(app)  # Litestar answers 500 itself: hear the exception it handled

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self.hooked:  # inside Litestar's own middleware stack: its app is in the scope
            self.hooked = True
            hook_litestar(scope.get("litestar_app"))
        started = begin("asgi", self.entry)
        if started is None:
            await self.app(scope, receive, send)
            return
        client, recording, _ = started
        try:
            exchange = _Exchange(scope, receive, send, recording, client.options.max_body_size)
        except Exception as exc:
            report_internal_error("recording an ASGI request", exc)
            end(started, kept=False)
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except BaseException as exc:
            take_handled(recording.outcome)
            record_error(client, recording, exc)
            recording.outcome.setdefault("status", 500)  # what the server in front will answer
            kept = client.keep(recording)
            if kept:
                await exchange.drain()
                exchange.finish(self.entry, self)
            end(started, kept=kept)
            raise
        outcome = recording.outcome
        handled = take_handled(outcome) if HANDLED in outcome else None  # a framework's caught exception
        if handled is not None and outcome.get("status", 500) >= 500 and not outcome.get("kind"):
            record_error(client, recording, handled)  # the framework answered 500 for this exception
            outcome = recording.outcome
        if not outcome.get("kind"):
            outcome["kind"] = "ok" if outcome.get("status", 500) < 500 else "http_5xx"
        kept = client.keep(recording)
        if kept:
            await exchange.drain()
            exchange.finish(self.entry, self)
        end(started, kept=kept)
