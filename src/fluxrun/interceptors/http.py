"""HTTP fetches through httpx and its successor httpx2: `Client.send` and `AsyncClient.send`.

Every request method (`get`, `post`, `stream`, ...) ends in `send`, so one patch per client class
sees them all, streamed or not. The connection pool's own IO (clock reads, DNS) runs inside the
call and is not recorded separately. Non-streamed responses are recorded decoded (as the app read
them); streamed ones are teed chunk by chunk as the app reads them, raw, up to the body limit.

At replay `send` is answered from the recording: matched by method, URL and body within the task
that made it, the same request twice gets the recorded answers in order, and a recorded transport
error is raised again as the same httpx exception. No connection is opened.
"""

from __future__ import annotations

import contextlib
import datetime
from asyncio.events import _get_running_loop
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import wrapt

from fluxrun._context import Scope, _get_ident, _task_of, current, scope_var
from fluxrun._internal import caller_frame, caller_site, perf_ns, report_internal_error, site_of
from fluxrun.interceptors.base import Patch, error_fields, loaded, raise_recorded_error
from fluxrun.model.export import body_bytes
from fluxrun.replay.matchers import RequestView, http_matcher

__all__ = ["HttpInterceptor", "body_snapshot"]

KIND = "http"
MODULES = ("httpx", "httpx2")


def _as_data(data: dict[str, Any]) -> dict[str, Any]:
    return data


def body_snapshot(content: bytes, limit: int) -> dict[str, Any]:
    """A request or response body as recorded: bytes up to `limit`, the full size, and a truncation mark."""
    out: dict[str, Any] = {"bytes": content[:limit], "size": len(content)}
    if len(content) > limit:
        out["truncated"] = True
    return out


class _Support:
    """What the wrappers need of one HTTP library (httpx or httpx2) and the current body limit."""

    def __init__(self, module: Any, limit: Callable[[], int]) -> None:
        self.module = module
        self.name = module.__name__
        self.limit = limit
        support = self

        class TeeStream(module.SyncByteStream):  # type: ignore[misc]
            def __init__(self, inner: Any, entry: list[Any]) -> None:
                self.inner, self.entry, self.size = inner, entry, 0
                self.chunks: list[bytes] = []

            def __iter__(self) -> Iterator[bytes]:
                for chunk in self.inner:
                    support.tee(self, chunk)
                    yield chunk
                support.finish_stream(self)

            def close(self) -> None:
                support.finish_stream(self)
                self.inner.close()

        class AsyncTeeStream(module.AsyncByteStream):  # type: ignore[misc]
            def __init__(self, inner: Any, entry: list[Any]) -> None:
                self.inner, self.entry, self.size = inner, entry, 0
                self.chunks: list[bytes] = []

            async def __aiter__(self) -> AsyncIterator[bytes]:
                async for chunk in self.inner:
                    support.tee(self, chunk)
                    yield chunk
                support.finish_stream(self)

            async def aclose(self) -> None:
                support.finish_stream(self)
                await self.inner.aclose()

        self.TeeStream = TeeStream
        self.AsyncTeeStream = AsyncTeeStream

    # -- request side ------------------------------------------------------------------------------
    def start(self, scope: Scope, request: Any, stream: bool) -> list[Any] | None:
        """Append the fetch to the log as a list entry (see `Recording.log`) that `finish` completes."""
        try:
            loop = _get_running_loop()
            owner = _task_of(loop) if loop is not None else _get_ident()
            here = scope if owner is scope.owner or owner == scope.owner else scope.here()
            try:
                content = request.content
            except self.module.RequestNotRead:
                body = self.request_body(request)
            else:
                limit = self.limit()
                size = len(content)
                body = {"bytes": content, "size": size} if size <= limit else body_snapshot(content, limit)
            # Raw parts only (the URL object is immutable, header pairs are bytes): the export formats
            # them off the request path, and only for executions that are kept.
            data = {
                "client": self.name,
                "request": {"method": request.method, "url": request.url, "headers": request.headers.raw, "body": body},
                "stream": stream,
            }
            entry = [KIND, None, here.path, caller_site(3), perf_ns(), 0, _as_data, data, None]
            here.recording.log.append(entry)  # type: ignore[arg-type]
            return entry
        except Exception as exc:
            report_internal_error("http capture", exc)
            return None

    def request_body(self, request: Any) -> dict[str, Any]:
        try:
            return body_snapshot(request.content, self.limit())
        except self.module.RequestNotRead:
            length = request.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) <= self.limit():
                request.read()  # buffers a known-small stream; httpx then sends the buffered copy
                return body_snapshot(request.content, self.limit())
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
    def finish(self, entry: list[Any] | None, response: Any, stream: bool) -> None:
        if entry is None:
            return
        try:
            entry[5] = perf_ns() - entry[4]
            extensions = response.extensions
            recorded: dict[str, Any] = {
                "status": response.status_code,
                "reason": extensions.get("reason_phrase", b""),
                "http_version": extensions.get("http_version", b"HTTP/1.1"),
                "headers": response.headers.raw,
                "redirects": len(response.history),
            }
            entry[7]["response"] = recorded
            try:
                content = response.content  # a streamed response may come complete (from a mock transport)
            except self.module.ResponseNotRead:
                content = None
            if content is None:
                if stream:
                    recorded["body"] = {"bytes": b"", "size": 0, "encoding": "raw", "complete": False}
                    tee = (
                        self.AsyncTeeStream
                        if isinstance(response.stream, self.module.AsyncByteStream)
                        else self.TeeStream
                    )
                    response.stream = tee(response.stream, entry)
                    return
                content = b""
            limit = self.limit()
            size = len(content)
            if size <= limit:
                recorded["body"] = {"bytes": content, "size": size, "encoding": "decoded"}
            else:
                recorded["body"] = {**body_snapshot(content, limit), "encoding": "decoded"}
        except Exception as exc:
            report_internal_error("http capture", exc)

    def fail(self, entry: list[Any] | None, exc: BaseException) -> None:
        if entry is None:
            return
        try:
            entry[5] = perf_ns() - entry[4]
            entry[8] = error_fields(exc)
        except Exception as internal:
            report_internal_error("http capture", internal)

    def tee(self, stream: Any, chunk: bytes) -> None:
        try:
            room = self.limit() - sum(len(c) for c in stream.chunks)
            if room > 0:
                stream.chunks.append(chunk[:room])
            stream.size += len(chunk)
        except Exception as exc:
            report_internal_error("http stream capture", exc)

    def finish_stream(self, stream: Any) -> None:
        try:
            body = stream.entry[7]["response"]["body"]
            if body.get("complete"):
                return
            content = b"".join(stream.chunks)
            body.update(bytes=content, size=stream.size, complete=True)
            if stream.size > len(content):
                body["truncated"] = True
        except Exception as exc:
            report_internal_error("http stream capture", exc)


def _replay_body(request: Any, module: Any) -> bytes | None:
    try:
        return bytes(request.content)
    except module.RequestNotRead:
        return None


class _Replayer:
    """The replay side: answer `send` from the recording, matched by method, URL and body, per task."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def answer(self, scope: Scope, request: Any, body: bytes | None) -> Any:
        frame = caller_frame(4)
        here = scope.here()
        site = site_of(frame)
        session = here.session
        assert session is not None
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
        view = RequestView(request.method, str(request.url), headers, body)
        call = f"{request.method} {request.url}"
        event = session.take(KIND, call, here.path, frame, site, match=http_matcher(view))
        here.recording.add(KIND, call, here.path, site, {})
        error = event.get("error")
        if error is not None:
            raise self.rebuild_error(error, request)
        recorded = event["data"]["response"]
        content = recorded.get("body") or {}
        if content.get("truncated") or (event["data"].get("stream") and not content.get("complete", True)):
            raise session.refuse(
                KIND, call, here.path, frame,
                f"the recorded response body is incomplete ({content.get('size')} bytes arrived, "
                f"{len(body_bytes(content))} kept): raise max_body_size (FLUXRUN_MAX_BODY_SIZE) "
                "where it is captured",
            )  # fmt: skip
        decoded = content.get("encoding", "decoded") == "decoded"
        skip = {"content-length", "transfer-encoding"} | ({"content-encoding"} if decoded else set())
        response = self.module.Response(
            recorded["status"],
            headers=[(k, v) for k, v in recorded.get("headers", []) if k.lower() not in skip],
            content=body_bytes(content),
            request=request,
            extensions={
                "http_version": str(recorded.get("http_version") or "HTTP/1.1").encode(),
                **({"reason_phrase": str(recorded["reason"]).encode()} if recorded.get("reason") else {}),
            },
        )
        response.elapsed = datetime.timedelta(microseconds=event.get("dur_ns", 0) / 1000)
        return response

    def rebuild_error(self, error: dict[str, Any], request: Any) -> BaseException:
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
    replayer = _Replayer(support.module)

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        scope = current()
        if scope is None:
            return wrapped(*args, **kwargs)
        request: Any = args[0] if args else kwargs.get("request")
        if scope.session is not None:
            with contextlib.suppress(Exception):  # nothing is sent at replay: buffering an upload is harmless
                request.read()
            return replayer.answer(scope, request, _replay_body(request, support.module))
        stream = bool(kwargs.get("stream", False))
        event = support.start(scope, request, stream)
        token = scope_var.set(None)
        try:
            response = wrapped(*args, **kwargs)
        except BaseException as exc:
            scope_var.reset(token)
            support.fail(event, exc)
            raise
        scope_var.reset(token)
        support.finish(event, response, stream)
        return response

    return wrapper


def _async_wrapper(support: _Support) -> Callable[..., Any]:
    replayer = _Replayer(support.module)

    async def replay(scope: Scope, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        request: Any = args[0] if args else kwargs.get("request")
        with contextlib.suppress(Exception):
            await request.aread()
        return replayer.answer(scope, request, _replay_body(request, support.module))

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
            support.fail(event, exc)
            raise
        scope_var.reset(token)
        support.finish(event, response, stream)
        return response

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        scope = current()
        if scope is None:
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
                    wrapt.FunctionWrapper(vars(module.Client)["send"], _sync_wrapper(support)),
                )
            )
            patches.append(
                Patch(
                    module.AsyncClient,
                    "send",
                    wrapt.FunctionWrapper(vars(module.AsyncClient)["send"], _async_wrapper(support)),
                )
            )
        return patches

    def rebind(self) -> dict[int, Any]:
        return {}
