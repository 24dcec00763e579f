"""The HTTP edge, in front of every route: what a request may be before any of it is parsed or authenticated.

- A URL with a NUL character (`%00`) is refused (400): no route has a use for one, and PostgreSQL refuses
  NUL in text, which made `q=a%00b` a 500.
- Every body has a byte limit chosen by its path (`EdgeLimits`). A declared Content-Length over it is
  answered 413 before the app runs at all (so before the token check); a body that streams in is counted
  as it arrives and stopped at the limit. FastAPI's own `max_body_size` works per route, and so cannot
  cover the ingest fast path, which answers before routing, nor say which limit was hit.
- The whole body must arrive within `body_timeout_s` of the headers (408, connection closed): a sender
  that trickles a byte now and then cannot hold a request open. The headers' own deadline and size limit
  are enforced below ASGI, in `fluxrun_server.api.protocol`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["EdgeGuard", "EdgeLimits"]


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    default_body_bytes: int
    body_timeout_s: float
    body_bytes_by_path: Mapping[str, int] = field(default_factory=dict)

    def body_limit(self, path: str) -> int:
        return self.body_bytes_by_path.get(path.rstrip("/") or "/", self.default_body_bytes)


class _Refused(HTTPException):
    """A body refused at the edge. An HTTPException, so that FastAPI's body parsing lets it through (it turns
    any other error into a 400) and its exception middleware answers it; other apps let it reach `EdgeGuard`."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(status_code, detail, headers={"connection": "close"})


class EdgeGuard:
    """ASGI middleware: NUL-free URLs, a byte limit per path and a body deadline; see the module doc."""

    def __init__(self, app: ASGIApp, limits: EdgeLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if "\x00" in path or b"%00" in scope["query_string"].lower():
            await _answer(send, 400, "the URL contains a NUL character (%00); no FluxRun route accepts one")
            return
        limit = self.limits.body_limit(path)
        where = f"{scope['method']} {path}"
        declared = _content_length(scope)
        if declared == -1:
            await _answer(send, 400, "the Content-Length header is not a number")
            return
        if declared is not None and declared > limit:
            await _answer(send, 413, f"request body is {declared} bytes, over the {limit} byte limit of {where}")
            return

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout_s
        received = 0
        body_done = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                return await receive()  # after the body: only the disconnect is left to wait for, unbounded
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise _Refused(
                    408, f"the request body did not arrive within {self.limits.body_timeout_s:g} s of its headers"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _Refused(413, f"request body is over the {limit} byte limit of {where}")
                body_done = not message.get("more_body", False)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except Exception as exc:
            refused = _refused(exc)
            if refused is None or response_started:
                raise
            await _answer(send, refused.status_code, refused.detail)


def _refused(exc: BaseException) -> _Refused | None:
    """The edge refusal `exc` is, also when an app's task group wrapped it in an ExceptionGroup."""
    if isinstance(exc, _Refused):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _refused(inner)
            if found is not None:
                return found
    return None


def _content_length(scope: Scope) -> int | None:
    """The declared body length; None when absent, -1 when it is not a number."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() and len(value) < 20 else -1
    return None


async def _answer(send: Send, status: int, detail: str) -> None:
    """A JSON error as FastAPI would give it, and the connection is closed (its unread body is dropped)."""
    body = orjson.dumps({"detail": detail})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
