"""`FluxRunMiddleware`: capture each HTTP request of an ASGI app (FastAPI, Starlette, ...).

A pure ASGI middleware (not `BaseHTTPMiddleware`), so it adds no task and streams untouched:
it records the request as it is received and the response as it is sent, up to the body limit.
Add it with `app.add_middleware(FluxRunMiddleware)` or wrap any ASGI app: `FluxRunMiddleware(app)`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fluxrun._capture import record_error
from fluxrun._client import begin, end
from fluxrun._internal import report_internal_error
from fluxrun.middleware.request import find_entry

__all__ = ["FluxRunMiddleware"]

Scope = dict[str, Any]


def _has_body(scope: Scope) -> bool:
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            return value not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False


class FluxRunMiddleware:
    def __init__(self, app: Any, *, entry: str | None = None) -> None:
        self.app = app
        self.entry = entry

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = begin("asgi", self.entry)
        if started is None:
            await self.app(scope, receive, send)
            return
        client, recording, _ = started
        limit = client.options.max_body_size
        request_body: list[bytes] = []
        request_size = 0
        request_done = False
        response: dict[str, Any] = {}
        response_body: list[bytes] = []
        response_size = 0
        try:
            headers = scope.get("headers") or []
            recording.request = {
                "method": scope.get("method"),
                "path": scope.get("path"),
                "root_path": scope.get("root_path", ""),
                "query_string": scope.get("query_string", b""),
                "scheme": scope.get("scheme", "http"),
                "http_version": scope.get("http_version"),
                "server": list(scope["server"]) if scope.get("server") else None,
                "headers": list(headers),  # request id and traceparent are read from these on export
            }
        except Exception as exc:
            report_internal_error("recording an ASGI request", exc)

        async def receive_recorded() -> Any:
            nonlocal request_size, request_done
            message = await receive()
            try:
                if message.get("type") == "http.request":
                    chunk = message.get("body", b"")
                    if request_size < limit:
                        request_body.append(chunk[: limit - request_size])
                    request_size += len(chunk)
                    request_done = not message.get("more_body", False)
                else:
                    request_done = True
            except Exception as exc:
                report_internal_error("recording an ASGI request body", exc)
            return message

        async def send_recorded(message: Any) -> None:
            nonlocal response_size
            try:
                kind = message.get("type")
                if kind == "http.response.start":
                    response["status"] = message["status"]
                    response["headers"] = list(message.get("headers") or [])
                    recording.outcome["status"] = message["status"]
                elif kind == "http.response.body":
                    chunk = message.get("body", b"")
                    if response_size < limit:
                        response_body.append(chunk[: limit - response_size])
                    response_size += len(chunk)
            except Exception as exc:
                report_internal_error("recording an ASGI response", exc)
            await send(message)

        async def drain_if_kept() -> bool:
            """A kept execution needs the whole request body for replay, even the part the app never read."""
            kept = client.keep(recording)
            if kept and not request_done and _has_body(scope):
                try:
                    while not request_done and request_size < limit:
                        if (await asyncio.wait_for(receive_recorded(), 2.0)).get("type") != "http.request":
                            break
                except Exception as exc:
                    report_internal_error("reading the rest of an ASGI request body", exc)
            return kept

        try:
            await self.app(scope, receive_recorded, send_recorded)
        except BaseException as exc:
            record_error(client, recording, exc)
            recording.outcome.setdefault("status", 500)  # what the server in front will answer
            kept = await drain_if_kept()
            self._finish(scope, recording, request_body, request_size, response, response_body, response_size)
            end(started, kept=kept)
            raise
        if not recording.outcome.get("kind"):
            recording.outcome["kind"] = "ok" if recording.outcome.get("status", 500) < 500 else "http_5xx"
        kept = await drain_if_kept()
        self._finish(scope, recording, request_body, request_size, response, response_body, response_size)
        end(started, kept=kept)

    def _finish(
        self,
        scope: Scope,
        recording: Any,
        request_body: list[bytes],
        request_size: int,
        response: dict[str, Any],
        response_body: list[bytes],
        response_size: int,
    ) -> None:
        try:
            request = recording.request
            route = scope.get("route")
            request["route"] = getattr(route, "path", None) or scope.get("path")
            body = b"".join(request_body)
            request["body"] = {
                "bytes": body,
                "size": request_size,
                **({"truncated": True} if request_size > len(body) else {}),
            }
            if response:
                out = b"".join(response_body)
                response["body"] = {
                    "bytes": out,
                    "size": response_size,
                    **({"truncated": True} if response_size > len(out) else {}),
                }
                recording.outcome["response"] = response
            if recording.entry is None:
                recording.entry = self.entry or find_entry(scope.get("app") or self.app)
        except Exception as exc:
            report_internal_error("finishing an ASGI capture", exc)
