"""HTTP fetches through aiohttp's `ClientSession`: every request, plain or streamed, redirects hop by hop.

`ClientSession._request` (behind `get`, `post`, `request`, `aiohttp.request`) gets one more client
middleware while an execution is captured or replayed, placed innermost, next to the connection: it sees
each request aiohttp is about to send (the final URL, headers and body) and the response it gets back.
The session's own logic (redirects, cookies, `raise_for_status`, the app's middlewares) runs as it does
live. The body is recorded as the app reads `response.content`, piece by piece with its boundaries
(`read`, `iter_chunked`, `iter_any`, lines, `json()`), up to where the app stopped.

At replay the middleware answers from the recording and never calls the connector: no connection is
opened. Matched by method, URL and body within the task; the body comes back at its recorded boundaries;
a recorded error is raised again as aiohttp's own (`ClientConnectorError`, `ServerDisconnectedError`...).
Needs aiohttp 3.12 or later (client middlewares); with an older aiohttp nothing is patched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from fluxrun._context import current, scope_var
from fluxrun._internal import report_internal_error
from fluxrun.interceptors.base import BoundWhenActive, Patch, loaded, raise_recorded_error
from fluxrun.interceptors.hot_path import end_call
from fluxrun.interceptors.http_stream import NO_BODY, BodyTape, ConsumedBody, request_body, snapshot
from fluxrun.interceptors.urllib3 import fail_fetch, outcome_of, raw_pairs, start_fetch, take_request
from fluxrun.model.recording import CallEntry

__all__ = ["AiohttpInterceptor"]

KIND = "http"


def _upload(body: Any, limit: int) -> Mapping[str, Any]:
    """aiohttp's request body: bytes, or a bytes payload (json=, data=bytes/str/form); others are streamed."""
    if body == b"":  # no body (a GET)
        return NO_BODY
    if isinstance(body, (bytes, bytearray)):
        return snapshot(bytes(body), limit)
    value = getattr(body, "_value", None)
    if isinstance(value, (bytes, bytearray)):
        return snapshot(bytes(value), limit)
    return request_body(None, limit) if body is None else {"bytes": b"", "size": None, "streamed": True}


class _TeeReader:
    """`response.content` at capture: the real `StreamReader`, with every piece it returns recorded."""

    __slots__ = ("_consumed", "_inner", "_module")

    def __init__(self, inner: Any, consumed: ConsumedBody, module: Any) -> None:
        self._inner = inner
        self._consumed = consumed
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def _tee(self, read: Any, *args: Any) -> Any:
        try:
            result = await read(*args)
        except BaseException as exc:
            self._failed(exc)
            raise
        self._got(result[0] if isinstance(result, tuple) else result)
        return result

    def _got(self, data: bytes) -> None:
        self._consumed.piece(data)
        if not data or self._inner.at_eof():
            self._consumed.end()

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, asyncio.IncompleteReadError):
            self._consumed.piece(exc.partial)
            self._consumed.end()
        elif isinstance(exc, asyncio.CancelledError):
            self._consumed.cancelled()
        elif not isinstance(exc, self._module.streams.EofStream):
            self._consumed.fail(exc)

    async def read(self, n: int = -1) -> bytes:
        """`_tee` written out: behind `response.read()`, `.json()`, `.text()` and `iter_chunked`, the read
        nearly every recorded response goes through, without a coroutine more per read."""
        inner = self._inner
        try:
            data: bytes = await inner.read(n)
        except BaseException as exc:
            self._failed(exc)
            raise
        consumed = self._consumed
        if data:
            consumed.piece(data)
            if not inner.at_eof():
                return data
        consumed.end()
        return data

    async def readany(self) -> bytes:
        return await self._tee(self._inner.readany)  # type: ignore[no-any-return]

    async def readchunk(self) -> tuple[bytes, bool]:
        return await self._tee(self._inner.readchunk)  # type: ignore[no-any-return]

    async def readline(self, *args: Any) -> bytes:
        return await self._tee(self._inner.readline, *args)  # type: ignore[no-any-return]

    async def readuntil(self, *args: Any) -> bytes:
        return await self._tee(self._inner.readuntil, *args)  # type: ignore[no-any-return]

    async def readexactly(self, n: int) -> bytes:
        return await self._tee(self._inner.readexactly, n)  # type: ignore[no-any-return]

    def iter_chunked(self, n: int) -> Any:
        return self._module.streams.AsyncStreamIterator(lambda: self.read(n))

    def iter_any(self) -> Any:
        return self._module.streams.AsyncStreamIterator(self.readany)

    def iter_chunks(self) -> Any:
        return self._module.streams.ChunkTupleAsyncStreamIterator(self)

    def __aiter__(self) -> Any:
        return self._module.streams.AsyncStreamIterator(self.readline)


class _TapeReader:
    """`response.content` at replay: the `StreamReader` API over the recorded pieces."""

    def __init__(self, tape: BodyTape, module: Any) -> None:
        self._tape = tape
        self._module = module
        self._exception: BaseException | None = None
        self._callbacks: list[Callable[[], None]] = []

    def _check(self) -> None:
        if self._exception is not None and not (self._tape.at_end() and self._tape.complete):
            raise self._exception

    def _ended(self, data: bytes) -> bytes:
        if self._tape.at_end() and self._tape.complete:
            callbacks, self._callbacks = self._callbacks, []
            for callback in callbacks:
                callback()
        return data

    async def read(self, n: int = -1) -> bytes:
        self._check()
        tape = self._tape
        return self._ended(await tape.pend(tape.rest) if n is None or n < 0 else await tape.pend(tape.piece, n))

    async def readany(self) -> bytes:
        self._check()
        return self._ended(await self._tape.pend(self._tape.piece))

    async def readchunk(self) -> tuple[bytes, bool]:
        self._check()
        data = self._ended(await self._tape.pend(self._tape.piece))
        return (data, bool(data))

    async def readline(self, max_line_length: int | None = None) -> bytes:
        return await self.readuntil(b"\n")

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        self._check()
        return self._ended(await self._tape.pend(self._tape.line, separator))

    async def readexactly(self, n: int) -> bytes:
        self._check()
        data = self._ended(await self._tape.pend(self._tape.exactly, n))
        if len(data) < n:
            raise asyncio.IncompleteReadError(data, n)
        return data

    def read_nowait(self, n: int = -1) -> bytes:
        return self._ended(self._tape.rest() if n < 0 else self._tape.piece(n))

    def iter_chunked(self, n: int) -> Any:
        return self._module.streams.AsyncStreamIterator(lambda: self.read(n))

    def iter_any(self) -> Any:
        return self._module.streams.AsyncStreamIterator(self.readany)

    def iter_chunks(self) -> Any:
        return self._module.streams.ChunkTupleAsyncStreamIterator(self)

    def __aiter__(self) -> Any:
        return self._module.streams.AsyncStreamIterator(self.readline)

    def at_eof(self) -> bool:
        return self._tape.at_end() and self._tape.complete

    def is_eof(self) -> bool:
        return self.at_eof()

    def exception(self) -> BaseException | None:
        return self._exception

    def set_exception(self, exc: BaseException, exc_cause: BaseException | None = None) -> None:
        self._exception = exc

    def on_eof(self, callback: Callable[[], None]) -> None:
        if self.at_eof():
            callback()
        else:
            self._callbacks.append(callback)

    def feed_eof(self) -> None:
        pass

    async def wait_eof(self) -> None:
        pass

    @property
    def total_bytes(self) -> int:
        return self._tape.pos


class _NoWriter:
    output_size = 0


def _rebuild_error(module: Any, error: dict[str, Any], request: Any) -> BaseException:
    module_name, _, qualname = str(error.get("type", "")).partition(":")
    cls = getattr(module, qualname, None) if module_name.split(".")[0] == "aiohttp" else None
    message = str(error.get("message", ""))
    if isinstance(cls, type) and issubclass(cls, BaseException):
        build: Any = cls
        try:
            if issubclass(cls, module.ClientConnectorError):
                errno, strerror = error.get("os_error") or (None, message)
                return build(request.connection_key, OSError(errno, strerror))  # type: ignore[no-any-return]
            if issubclass(cls, module.ClientResponseError):
                return build(request.request_info, (), message=message)  # type: ignore[no-any-return]
            return build(message)  # type: ignore[no-any-return]
        except Exception:
            pass
    try:
        raise_recorded_error({"error": error})
    except BaseException as exc:
        return exc
    return RuntimeError(message)  # pragma: no cover - raise_recorded_error always raises


def _middleware(module: Any, limit: Callable[[], int]) -> Callable[..., Any]:
    async def fluxrun_middleware(request: Any, handler: Callable[[Any], Any]) -> Any:
        scope = current()
        if scope is None:
            return await handler(request)
        if scope.session is not None:
            return await replay(scope, request)
        entry = None
        try:
            entry = start_fetch(  # the URL as yarl's immutable `URL`, made text only if the execution is kept
                scope, "aiohttp", request.method, request.url, request.headers, _upload(request.body, limit())
            )
        except Exception as exc:
            report_internal_error("aiohttp capture", exc)
        token = scope_var.set(None)
        try:
            response = await handler(request)
        except BaseException as exc:
            scope_var.reset(token)
            fail_fetch(entry, exc, scope)
            if entry is not None and entry.error is not None and isinstance(exc, module.ClientConnectorError):
                entry.error["os_error"] = [exc.os_error.errno, exc.os_error.strerror]
            raise
        scope_var.reset(token)
        if entry is not None:
            record(entry, response, scope)
        return response

    def record(entry: CallEntry, response: Any, scope: Any) -> None:
        try:
            if not end_call(entry, scope):
                return
            body = ConsumedBody(limit(), "decoded")
            entry.value["response"] = {
                "status": response.status,
                "reason": response.reason or "",
                # aiohttp's `HttpVersion` (an immutable named tuple) and bytes pairs as received: made text when
                # the execution is sealed (urllib3._fetch_data)
                "http_version": response.version,
                "headers": raw_pairs(response.raw_headers),
                "body": body,
            }
            response.content = _TeeReader(response.content, body, module)
        except Exception as exc:
            report_internal_error("aiohttp capture", exc)

    async def replay(scope: Any, request: Any) -> Any:
        url = str(request.url)
        upload = _upload(request.body, 1 << 62)
        view = None if upload.get("streamed") else bytes(upload["bytes"])
        session, event, refuse = take_request(scope, request.method, url, request.headers, view)
        await session.turn(event, "response")  # recorded completion order; a call left pending stays pending
        recorded, error = outcome_of(event, refuse)
        if error is not None:
            raise _rebuild_error(module, error, request)
        assert recorded is not None
        return _response(module, request, recorded, refuse)

    return fluxrun_middleware


def _response(module: Any, request: Any, recorded: dict[str, Any], refuse: Callable[[str], BaseException]) -> Any:
    """The recorded response as a `ClientResponse` that has no connection."""
    from multidict import CIMultiDict, CIMultiDictProxy

    loop = asyncio.get_running_loop()
    response = request.response_class(
        request.method,
        request.original_url,
        writer=None,
        continue100=None,
        timer=module.helpers.TimerNoop(),
        request_info=request.request_info,
        traces=[],
        loop=loop,
        session=request._session,
        stream_writer=_NoWriter(),
    )
    headers = [(str(k), str(v)) for k, v in recorded.get("headers", [])]
    major, _, minor = str(recorded.get("http_version") or "HTTP/1.1").removeprefix("HTTP/").partition(".")
    response.version = module.HttpVersion(int(major or 1), int(minor or 0))
    response.status = recorded["status"]
    response.reason = recorded.get("reason") or ""
    response._headers = CIMultiDictProxy(CIMultiDict(headers))
    response._raw_headers = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers)
    cookies = tuple(v for k, v in headers if k.lower() == "set-cookie")
    if cookies:
        response._raw_cookie_headers = cookies
    response.content = _TapeReader(BodyTape(recorded.get("body"), refuse, _raised), module)
    response._closed = False
    return response


def _raised(error: dict[str, Any]) -> BaseException:
    try:
        raise_recorded_error({"error": error})
    except BaseException as exc:
        return exc
    return RuntimeError(error.get("message", ""))  # pragma: no cover - raise_recorded_error always raises


def _request_wrapper(middleware: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if current() is None:
            return wrapped(*args, **kwargs)
        chosen: Any = kwargs.get("middlewares")
        if chosen is None:
            chosen = getattr(instance, "_middlewares", ())
        kwargs["middlewares"] = (*chosen, middleware)  # this call's own dict (`**kwargs` is made per call)
        return wrapped(*args, **kwargs)

    return wrapper


class AiohttpInterceptor:
    kind = KIND

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        module = loaded("aiohttp")
        client = getattr(module, "client", None)
        supported = client is not None and hasattr(client, "build_client_middlewares")
        self.module = module if supported else None
        self.modules = ("aiohttp",) if self.module is not None else ()  # what the coverage report counts

    def patches(self) -> list[Patch]:
        if self.module is None:
            return []
        session = self.module.ClientSession
        wrapper = _request_wrapper(_middleware(self.module, self._limit))
        # chosen when looked up (`get` calls `self._request(...)`): idle, the original itself, with no
        # function in between to take `_request`'s 31 keyword-only parameters and pass them on again
        return [Patch(session, "_request", BoundWhenActive(vars(session)["_request"], wrapper))]

    def rebind(self) -> dict[int, Any]:
        return {}
