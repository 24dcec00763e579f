"""HTTP fetches through httpx and its successor httpx2: `Client.send` and `AsyncClient.send`.

Every request method (`get`, `post`, `stream`, ...) ends in `send`, so one patch per client class
sees them all, streamed or not. The connection pool's own IO (clock reads, DNS) runs inside the
call and is not recorded separately. Non-streamed responses are recorded decoded (as the app read
them); streamed ones are teed chunk by chunk as the app reads them, raw, up to the body limit.

At replay `send` is answered from the recording: matched by method, URL and body within the task
that made it, the same request twice gets the recorded answers in order, and a recorded transport
error is raised again as the same httpx exception. No connection is opened.

A request whose transport runs an app in this process (`ASGITransport`, `WSGITransport`, Starlette's
TestClient) is no outside call: it passes through, neither recorded nor served, and the IO that app
makes is recorded and served as the app's own, so a failure inside it reproduces where it happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from fluxrun._context import Scope, current, scope_var
from fluxrun._internal import caller_frame, caller_site, report_internal_error, site_of
from fluxrun.interceptors.base import Patch, loaded, raise_recorded_error, wrap_client_method
from fluxrun.interceptors.hot_path import end_call, fail_call, start_call
from fluxrun.interceptors.http_match import RequestView, http_matcher
from fluxrun.interceptors.http_stream import BodyTape, ConsumedBody, recorded_body, snapshot
from fluxrun.model.export import body_bytes
from fluxrun.model.recording import CallEntry
from fluxrun.model.schema import AnyEvent

__all__ = ["HttpInterceptor"]

KIND = "http"
MODULES = ("httpx", "httpx2")
IN_PROCESS_TRANSPORTS = ("ASGITransport", "WSGITransport")
TEST_CLIENT_MODULE = "starlette.testclient"  # its transport runs the app on an anyio portal; never imported here


def _streamed_data(value: dict[str, Any]) -> dict[str, Any]:
    """A streamed fetch's `data` when its execution is sealed: the body as the app had consumed it by then
    (a new dict each time: an execution's events may be read twice)."""
    response = value["response"]
    return {**value, "response": {**response, "body": recorded_body(response["body"])}}


class _Support:
    """What the wrappers need of one HTTP library (httpx or httpx2) and the current body limit."""

    def __init__(self, module: Any, limit: Callable[[], int]) -> None:
        self.module = module
        self.name = module.__name__
        self.limit = limit

        class TeeStream(module.SyncByteStream):  # type: ignore[misc]
            """Hands the app each raw chunk and keeps it, with its boundary, as the app consumes it."""

            def __init__(self, inner: Any, consumed: ConsumedBody) -> None:
                self.inner, self.consumed = inner, consumed

            def __iter__(self) -> Iterator[bytes]:
                try:
                    for chunk in self.inner:
                        self.consumed.piece(chunk)
                        yield chunk
                except Exception as exc:
                    self.consumed.fail(exc)
                    raise
                self.consumed.end()

            def close(self) -> None:
                self.inner.close()

        class AsyncTeeStream(module.AsyncByteStream):  # type: ignore[misc]
            def __init__(self, inner: Any, consumed: ConsumedBody) -> None:
                self.inner, self.consumed = inner, consumed

            async def __aiter__(self) -> AsyncIterator[bytes]:
                try:
                    async for chunk in self.inner:
                        self.consumed.piece(chunk)
                        yield chunk
                except asyncio.CancelledError:
                    self.consumed.cancelled()
                    raise
                except Exception as exc:
                    self.consumed.fail(exc)
                    raise
                self.consumed.end()

            async def aclose(self) -> None:
                await self.inner.aclose()

        class TapeStream(module.SyncByteStream, module.AsyncByteStream):  # type: ignore[misc]
            """At replay: the recorded chunks at their recorded boundaries, then the end of what was recorded."""

            def __init__(self, tape: BodyTape) -> None:
                self.tape = tape

            def __iter__(self) -> Iterator[bytes]:
                while True:
                    chunk = self.tape.piece()
                    if not chunk:
                        return
                    yield chunk

            async def __aiter__(self) -> AsyncIterator[bytes]:
                while chunk := await self.tape.pend(self.tape.piece):
                    yield chunk

        self.TeeStream = TeeStream
        self.AsyncTeeStream = AsyncTeeStream
        self.TapeStream = TapeStream
        self.in_process = tuple(getattr(module, name) for name in IN_PROCESS_TRANSPORTS if hasattr(module, name))

    def runs_in_process(self, client: Any, request: Any) -> bool:
        """True when the transport that would carry `request` runs an app in this process: no outside call."""
        try:
            transport = client._transport_for_url(request.url)  # the client's transport, or a mounted one
            if isinstance(transport, self.in_process):
                return True
            test_client = sys.modules.get(TEST_CLIENT_MODULE)
            return test_client is not None and isinstance(transport, getattr(test_client, "_TestClientTransport", ()))
        except Exception as exc:
            report_internal_error("http capture", exc)
            return False

    # -- request side ------------------------------------------------------------------------------
    def start(self, scope: Scope, request: Any, stream: bool) -> CallEntry | None:
        """Append the fetch to the log as an entry that `finish` or `fail` completes."""
        try:
            try:
                content = request.content
            except self.module.RequestNotRead:
                body = self.request_body(request)
            else:
                limit = self.limit()
                size = len(content)
                body = {"bytes": content, "size": size} if size <= limit else snapshot(content, limit)
            # Raw parts only (the URL object is immutable, header pairs are bytes): the export formats
            # them off the request path, and only for executions that are kept.
            data = {
                "client": self.name,
                "request": {"method": request.method, "url": request.url, "headers": request.headers.raw, "body": body},
                "stream": stream,
            }
            return start_call(scope, KIND, None, caller_site(3), data)
        except Exception as exc:
            report_internal_error("http capture", exc)
            return None

    def request_body(self, request: Any) -> dict[str, Any]:
        try:
            return snapshot(request.content, self.limit())
        except self.module.RequestNotRead:
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) <= self.limit():
                request.read()  # buffers a known-small stream; httpx then sends the buffered copy
                return snapshot(request.content, self.limit())
            return {
                "bytes": b"",
                "size": int(length) if length and length.isdigit() else None,
                "streamed": True,
            }

    async def arequest_body(self, request: Any) -> None:
        """Async byte streams cannot be read synchronously; buffer small ones before `start`."""
        try:
            request.content  # noqa: B018 - raises RequestNotRead when not buffered yet
        except self.module.RequestNotRead:
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) <= self.limit():
                await request.aread()

    # -- response side -----------------------------------------------------------------------------
    def finish(self, entry: CallEntry | None, response: Any, stream: bool, scope: Scope) -> None:
        if entry is None:
            return
        try:
            if not end_call(entry, scope):
                return  # the execution had ended: the app never saw this answer, it stays pending
            extensions = response.extensions
            recorded: dict[str, Any] = {
                "status": response.status_code,
                "reason": extensions.get("reason_phrase", b""),
                "http_version": extensions.get("http_version", b"HTTP/1.1"),
                "headers": response.headers.raw,
                "redirects": len(response.history),
            }
            entry.value["response"] = recorded
            try:
                content = response.content  # a streamed response may come complete (from a mock transport)
            except self.module.ResponseNotRead:
                content = None
            if content is None:
                if stream:  # kept as the app reads it: an abandoned stream keeps what was consumed
                    consumed = recorded["body"] = ConsumedBody(self.limit(), "raw")
                    entry.build = _streamed_data
                    tee = (
                        self.AsyncTeeStream
                        if isinstance(response.stream, self.module.AsyncByteStream)
                        else self.TeeStream
                    )
                    response.stream = tee(response.stream, consumed)
                    return
                content = b""
            limit = self.limit()
            size = len(content)
            if size <= limit:
                recorded["body"] = {"bytes": content, "size": size, "encoding": "decoded"}
            else:
                recorded["body"] = {**snapshot(content, limit), "encoding": "decoded"}
        except Exception as exc:
            report_internal_error("http capture", exc)

    def fail(self, entry: CallEntry | None, exc: BaseException, scope: Scope) -> None:
        if entry is None:
            return
        try:
            fail_call(entry, exc, scope)
        except Exception as internal:
            report_internal_error("http capture", internal)


def _replay_body(request: Any, module: Any) -> bytes | None:
    try:
        return bytes(request.content)
    except module.RequestNotRead:
        return None


class _Replayer:
    """The replay side: answer `send` from the recording, matched by method, URL and body, per task."""

    def __init__(self, support: _Support) -> None:
        self.support = support
        self.module = support.module

    def find(self, scope: Scope, request: Any, body: bytes | None) -> tuple[Any, ...]:
        """The recorded answer of this request (taken now, in request order), and where it was made."""
        frame = caller_frame(4)
        here = scope.here()
        site = site_of(frame)
        session = here.session
        assert session is not None
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        view = RequestView(request.method, str(request.url), headers, body)
        call = f"{request.method} {request.url}"
        event = session.take(KIND, call, here.path, frame, site, match=http_matcher(view))
        return here, event, frame, site, call

    def answer(self, found: tuple[Any, ...], request: Any) -> Any:
        """The response (or error) of a found answer, once its turn has come; a recorded call that has no
        answer is a `ReplayDivergence`, never an internal error."""
        here, event, frame, site, call = found
        session = here.session
        here.recording.add(KIND, call, here.path, site, {})
        error = event.get("error")
        if error is not None:
            raise self.rebuild_error(error, request)
        try:
            return self.respond(here, event, frame, call, request)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise session.refuse(
                KIND, call, here.path, frame,
                f"the recording holds no usable answer for it ({type(exc).__name__}: {exc})",
            ) from None  # fmt: skip

    def respond(self, here: Scope, event: AnyEvent, frame: Any, call: str, request: Any) -> Any:
        session = here.session
        assert session is not None
        recorded = event["data"]["response"]
        content = recorded.get("body") or {}
        streamed = bool(event["data"].get("stream")) and "chunks" in content
        if content.get("truncated") and not streamed:
            raise session.refuse(
                KIND, call, here.path, frame,
                f"the recorded response body is incomplete ({content.get('size')} bytes arrived, "
                f"{len(body_bytes(content))} kept): raise max_body_size (FLUXRUN_MAX_BODY_SIZE) "
                "where it is captured",
            )  # fmt: skip
        decoded = content.get("encoding", "decoded") == "decoded"
        skip = {"content-length", "transfer-encoding"} | ({"content-encoding"} if decoded else set())
        if streamed:  # what the app consumed, chunk by chunk; reading further names the real cause
            tape = BodyTape(
                content,
                lambda reason: session.refuse(KIND, call, here.path, frame, reason),
                lambda error: self.rebuild_error(error, request),
            )
            body: dict[str, Any] = {"stream": self.support.TapeStream(tape)}
        else:
            body = {"content": body_bytes(content)}
        response = self.module.Response(
            recorded["status"],
            headers=[(k, v) for k, v in recorded.get("headers", []) if k.lower() not in skip],
            request=request,
            **body,
            extensions={
                "http_version": str(recorded.get("http_version") or "HTTP/1.1").encode(),
                **({"reason_phrase": str(recorded["reason"]).encode()} if recorded.get("reason") else {}),
            },
        )
        response.elapsed = datetime.timedelta(microseconds=event.get("dur_ns", 0) / 1000)
        return response

    def rebuild_error(self, error: Mapping[str, Any], request: Any) -> BaseException:
        module_name, _, qualname = str(error.get("type", "")).partition(":")
        cls = getattr(self.module, qualname, None) if module_name.split(".")[0] == self.module.__name__ else None
        if isinstance(cls, type) and issubclass(cls, self.module.RequestError):
            return cls(error.get("message", ""), request=request)  # type: ignore[no-any-return]
        try:
            raise_recorded_error({"error": error})
        except BaseException as exc:
            return exc
        return RuntimeError(error.get("message", ""))  # pragma: no cover - raise_recorded_error always raises


def _sync_wrapper(support: _Support) -> Callable[..., Any]:
    replayer = _Replayer(support)

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        scope = current()
        if scope is None:
            return wrapped(*args, **kwargs)
        request: Any = args[0] if args else kwargs.get("request")
        if support.runs_in_process(instance, request):  # the app behind it is the app: its own IO is recorded
            return wrapped(*args, **kwargs)
        if scope.session is not None:
            with contextlib.suppress(Exception):  # nothing is sent at replay: buffering an upload is harmless
                request.read()
            found = replayer.find(scope, request, _replay_body(request, support.module))
            found[0].session.wait_turn(found[1], "response")
            return replayer.answer(found, request)
        stream = bool(kwargs.get("stream", False))
        event = support.start(scope, request, stream)
        token = scope_var.set(None)
        try:
            response = wrapped(*args, **kwargs)
        except BaseException as exc:
            scope_var.reset(token)
            support.fail(event, exc, scope)
            raise
        scope_var.reset(token)
        support.finish(event, response, stream, scope)
        return response

    return wrapper


def _async_wrapper(support: _Support) -> Callable[..., Any]:
    replayer = _Replayer(support)

    async def replay(scope: Scope, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        request: Any = args[0] if args else kwargs.get("request")
        with contextlib.suppress(Exception):
            await request.aread()
        found = replayer.find(scope, request, _replay_body(request, support.module))
        await found[0].session.turn(found[1], "response")
        return replayer.answer(found, request)

    async def record(scope: Scope, wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        request: Any = args[0] if args else kwargs.get("request")
        stream = bool(kwargs.get("stream", False))
        try:
            request.content  # noqa: B018 - raises RequestNotRead when an upload is not buffered yet
        except support.module.RequestNotRead:
            try:
                await support.arequest_body(request)
            except Exception as exc:
                report_internal_error("http capture", exc)
        except Exception as exc:
            report_internal_error("http capture", exc)
        event = support.start(scope, request, stream)
        token = scope_var.set(None)
        try:
            response = await wrapped(*args, **kwargs)
        except BaseException as exc:
            scope_var.reset(token)
            support.fail(event, exc, scope)
            raise
        scope_var.reset(token)
        support.finish(event, response, stream, scope)
        return response

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        scope = current()
        if scope is None or support.runs_in_process(instance, args[0] if args else kwargs.get("request")):
            return wrapped(*args, **kwargs)
        if scope.session is not None:
            return replay(scope, args, kwargs)
        return record(scope, wrapped, args, kwargs)

    return wrapper


class HttpInterceptor:
    kind = KIND

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self.modules = [m for m in (loaded(name) for name in MODULES) if m is not None]

    def patches(self) -> list[Patch]:
        patches = []
        for module in self.modules:
            support = _Support(module, self._limit)
            patches.append(
                Patch(
                    module.Client,
                    "send",
                    wrap_client_method(vars(module.Client)["send"], _sync_wrapper(support)),
                )
            )
            patches.append(
                Patch(
                    module.AsyncClient,
                    "send",
                    wrap_client_method(vars(module.AsyncClient)["send"], _async_wrapper(support)),
                )
            )
        return patches

    def rebind(self) -> dict[int, Any]:
        return {}
