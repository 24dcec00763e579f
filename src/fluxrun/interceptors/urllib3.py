"""HTTP fetches through urllib3: the connection pool's `urlopen`, which botocore (boto3) and the stripe SDK use.

`PoolManager`, `request()` and every client built on urllib3 end in `HTTPConnectionPool.urlopen`, so
one patch sees them all. Its own retries and redirects call `urlopen` again inside the call: they are
part of it, recorded once with the final outcome. A client on top that is intercepted itself (requests)
suspends capture while it runs, so its fetch is one event, not two. The response body is recorded as the
caller reads it, piece by piece (`http_stream.ConsumedBody`), or whole when urllib3 preloaded it.

At replay `urlopen` is answered from the recording before any connection is made: matched by method,
URL and body within the task (`interceptors.http_match.http_matcher`), the body served at its recorded
boundaries by a `TapeResponse`, and a recorded error (`NewConnectionError`, `MaxRetryError`) raised again
as urllib3's own exception, so botocore and requests translate it as they did live.
"""

from __future__ import annotations

import datetime
import http.client
import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from fluxrun._context import Scope, current, scope_var
from fluxrun._internal import report_internal_error, site_of, site_ref
from fluxrun.answering import Answering
from fluxrun.interceptors.base import Patch, loaded, raise_recorded_error, wrap_client_method
from fluxrun.interceptors.hot_path import end_call, fail_call, start_call
from fluxrun.interceptors.http_match import RequestView, http_matcher
from fluxrun.interceptors.http_stream import (
    BodyTape,
    ConsumedBody,
    client_frame,
    recorded_body,
    request_body,
    snapshot,
)
from fluxrun.model.recording import CallEntry
from fluxrun.model.schema import AnyEvent

__all__ = [
    "Urllib3Interceptor",
    "answer_request",
    "body_view",
    "copy_headers_directly",
    "outcome_of",
    "raw_pairs",
    "record_response",
    "start_fetch",
    "take_request",
    "tape_response",
]

KIND = "http"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_VERSIONS = {10: "HTTP/1.0", 11: "HTTP/1.1", 20: "HTTP/2", 30: "HTTP/3"}


def _fetch_data(value: dict[str, Any]) -> dict[str, Any]:
    """A fetch's `data` when its execution is sealed, from what `start_fetch` kept flat (the request's parts
    beside the client's name: one dict less per call held until the execution ends). Headers snapshotted on
    the request path (`raw_pairs`) become text pairs here, off it (most executions are dropped), and a URL or
    HTTP version kept as the client's immutable object (aiohttp's yarl `URL` and `HttpVersion`) its text.
    Builds a new dict each time: `Recording.events` may be read more than once."""
    url, body = value["url"], value["body"]
    request = {
        "method": value["method"],
        "url": url if type(url) is str else str(url),
        "headers": _header_pairs(value["headers"]),
        "body": body if type(body) is dict else dict(body),  # `NO_BODY`, shared and read-only
    }
    data = {"client": value["client"], "request": request}
    for key, item in value.items():
        if key not in _REQUEST_PARTS:
            data[key] = item
    response = data.get("response")
    if response:
        response = data["response"] = dict(response)
        version = response.get("http_version")
        if type(version) is not str:  # aiohttp's `HttpVersion`, or None
            response["http_version"] = f"HTTP/{version[0]}.{version[1]}" if version else "HTTP/1.1"
        response["headers"] = _header_pairs(response.get("headers"))
        body = response.get("body")
        if type(body) is tuple:  # a body urllib3 preloaded: (bytes, limit)
            response["body"] = {**snapshot(*body), "encoding": "decoded", "complete": True}
        else:
            response["body"] = recorded_body(body)
    return data


_REQUEST_PARTS = frozenset({"client", "method", "url", "headers", "body"})


def _header_pairs(headers: Any) -> Any:
    """Text pairs of headers snapshotted by `raw_pairs`: a flat tuple, or a tuple of lines."""
    if type(headers) is not tuple:
        return headers  # already pairs (a response recorded by another path)
    if headers and type(headers[0]) is tuple:
        return [(_text(line[0]), _text(item)) for line in headers for item in line[1:]]
    return [(_text(headers[i]), _text(headers[i + 1])) for i in range(0, len(headers) - 1, 2)]


def raw_pairs(headers: Any) -> tuple[Any, ...]:
    """A snapshot of a header mapping or pair list as it is now, formatted by `_fetch_data` if kept: one flat
    tuple `(name, value, name, value, ...)`, made in C (one object held per call, not one more per header),
    or lines `((name, value, ...), ...)` for a urllib3 name with several values. The two header classes of the
    clients here are copied from their own storage: urllib3's `HTTPHeaderDict` keeps `[name, value, ...]` per
    lower-case name, requests' `CaseInsensitiveDict` keeps `(name, value)`; aiohttp's are a multidict and a
    tuple of byte pairs."""
    lines = _header_classes.get(type(headers))
    if lines is not None:  # empty or not: their own `__len__` is a Python call, the copy of nothing is ()
        if not lines:  # an OrderedDict, in insertion order (requests never moves a name): read as a dict, in C
            return tuple(_flat(_dict_values(headers._store)))
        container = headers._container
        flat = tuple(_flat(container.values()))
        # every line is `[name, value, ...]`, so twice the names means one value each
        return flat if len(flat) == 2 * len(container) else tuple(map(tuple, container.values()))
    if not headers:
        return ()
    if hasattr(headers, "items"):
        return tuple(_flat(headers.items()))
    pairs = headers if isinstance(headers, (list, tuple)) else list(headers)
    flat = tuple(_flat(pairs))
    return flat if len(flat) == 2 * len(pairs) else tuple(map(tuple, pairs))


_flat = itertools.chain.from_iterable
_dict_values = dict.values  # an OrderedDict's own `values()` looks every key up again


# header classes whose storage `raw_pairs` copies directly (their `items()` is a Python generator per header):
# True for lines in `_container` (urllib3), False for pairs in `_store` (requests)
_header_classes: dict[type, bool] = {}


def copy_headers_directly(cls: type, *, lines: bool) -> None:
    """Let `raw_pairs` copy `cls`'s own storage (checked on an empty instance: a layout it does not know is
    read through `items()` as before)."""
    if isinstance(getattr(cls(), "_container" if lines else "_store", None), dict):
        _header_classes[cls] = lines


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _text_pairs(headers: Any) -> list[tuple[str, str]]:
    if not headers:
        return []
    items = headers.items() if hasattr(headers, "items") else headers
    return [(_text(k), _text(v)) for k, v in items]


# -- capture ---------------------------------------------------------------------------------------
def start_fetch(
    scope: Scope,
    client: str,
    method: str,
    url: Any,
    headers: Any,
    body: Mapping[str, Any],
    stream: bool = True,
    depth: int = 3,
) -> CallEntry:
    """Append a fetch to the log as an entry that the response or error completes. `url` is text, or an
    immutable URL object that `_fetch_data` turns into text if the execution is kept. The walk to the app's
    frame starts `depth` frames up: 4 from a wrapper that `wrap_client_method`'s replacement calls starts past
    that replacement (each frame the walk looks at costs a frame object)."""
    frame = client_frame(depth)
    data = {
        "client": client,
        "method": method.upper(),
        "url": url,
        "headers": raw_pairs(headers),
        "body": body,
        "stream": stream,
    }
    entry = start_call(scope, KIND, None, site_ref(frame) if frame is not None else "?:?:0", data)
    entry.build = _fetch_data
    return entry


def fail_fetch(entry: CallEntry | None, exc: BaseException, scope: Scope | None = None) -> None:
    if entry is None:
        return
    try:
        fail_call(entry, exc, scope)
    except Exception as internal:
        report_internal_error("http capture", internal)


def record_response(entry: CallEntry | None, response: Any, limit: int, scope: Scope | None = None) -> None:
    """Record a urllib3 `HTTPResponse`'s head, and its body as the caller reads it (teed on the instance)."""
    if entry is None:
        return
    try:
        if not end_call(entry, scope):
            return
        recorded: dict[str, Any] = {
            "status": response.status,
            "reason": response.reason or "",
            "http_version": getattr(response, "version_string", None) or _VERSIONS.get(response.version, "HTTP/1.1"),
            "headers": raw_pairs(response.headers),
        }
        entry.value["response"] = recorded
        preloaded = getattr(response, "_body", None)
        if preloaded is not None:  # read by urllib3 itself (preload_content=True): whole, decoded
            # the bytes and the limit, snapshotted by `_fetch_data` if the execution is kept
            recorded["body"] = (bytes(preloaded), limit)
            entry.value["stream"] = False
            return
        consumed = recorded["body"] = ConsumedBody(limit)
        _tee(response, consumed)
    except Exception as exc:
        report_internal_error("http capture", exc)


def _tee(response: Any, consumed: ConsumedBody) -> None:
    """Hand every piece urllib3 returns to `consumed`: `stream`, `data`, `readinto` and iteration all go
    through `read`, `read1` and `read_chunked`, so overriding them sees every read exactly once. The response
    becomes a subclass of its own class (made once per class) rather than getting the readers as instance
    attributes: closures holding the response's own bound methods would make each response a reference
    cycle, left for the cyclic collector to find (a fifth of a recorded requests call's cost)."""
    cls = type(response)
    teed = _teed_classes.get(cls)
    if teed is None:
        readers = {f"_fluxrun_{name}": getattr(cls, name) for name in _READERS if hasattr(cls, name)}
        teed = _teed_classes[cls] = type(cls.__name__, (_TeedReads, cls), {"__module__": cls.__module__, **readers})
        teed.__qualname__ = cls.__qualname__
    response._fluxrun_consumed = consumed
    response.__class__ = teed


_teed_classes: dict[type, type] = {}
_READERS = ("read", "read1", "read_chunked")  # urllib3 1.x has no `read1`


class _TeedReads:
    """The readers `_tee` puts in front of a urllib3 `HTTPResponse`'s own (`_fluxrun_read`, ...: the class's
    own readers, set on the teed class, called without `super()`'s lookup per read)."""

    __slots__ = ()
    _fluxrun_consumed: ConsumedBody
    _fluxrun_read: Callable[..., bytes]
    _fluxrun_read1: Callable[..., bytes]
    _fluxrun_read_chunked: Callable[..., Iterator[bytes]]
    decode_content: bool

    def _fluxrun_encoding(self, decode_content: bool | None) -> ConsumedBody:
        consumed = self._fluxrun_consumed
        if consumed.encoding is None:
            decoded = self.decode_content if decode_content is None else decode_content
            consumed.encoding = "decoded" if decoded else "raw"
        return consumed

    def read(self, amt: int | None = None, decode_content: bool | None = None, cache_content: bool = False) -> bytes:
        consumed = self._fluxrun_consumed  # `_fluxrun_encoding`, inlined: behind every body requests reads
        if consumed.encoding is None:
            decoded = self.decode_content if decode_content is None else decode_content
            consumed.encoding = "decoded" if decoded else "raw"
        try:
            data = self._fluxrun_read(amt, decode_content, cache_content)
        except BaseException as exc:
            consumed.fail(exc)
            raise
        if data:  # the read that finds the end returns nothing: no piece to keep
            consumed.piece(data)
            if amt is not None and len(data) >= amt:
                return data
        consumed.complete = True
        return data

    def read1(self, amt: int | None = None, decode_content: bool | None = None) -> bytes:
        consumed = self._fluxrun_encoding(decode_content)
        try:
            data = self._fluxrun_read1(amt, decode_content)
        except BaseException as exc:
            consumed.fail(exc)
            raise
        consumed.piece(data)
        if not data and amt != 0:
            consumed.end()
        return data

    def read_chunked(self, amt: int | None = None, decode_content: bool | None = None) -> Iterator[bytes]:
        consumed = self._fluxrun_encoding(decode_content)
        try:
            for data in self._fluxrun_read_chunked(amt, decode_content):
                consumed.piece(data)
                yield data
        except GeneratorExit:
            raise
        except BaseException as exc:
            consumed.fail(exc)
            raise
        consumed.end()


# -- replay ----------------------------------------------------------------------------------------
class _Original:
    """What requests' cookie handling reads of the http.client response under urllib3's (`.msg`)."""

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.msg = http.client.HTTPMessage()
        for key, value in headers:
            self.msg[key] = value

    def isclosed(self) -> bool:
        return True

    def close(self) -> None:
        pass


_tape_classes: dict[int, type] = {}


def _tape_class(module: Any) -> type:
    """A urllib3 `HTTPResponse` whose reads come from a `BodyTape` (made once per urllib3 module)."""
    cls = _tape_classes.get(id(module))
    if cls is not None:
        return cls
    base = module.response.HTTPResponse

    class TapeResponse(base):  # type: ignore[misc, valid-type]
        _tape: BodyTape

        def read(
            self, amt: int | None = None, decode_content: bool | None = None, cache_content: bool = False
        ) -> bytes:
            data = self._tape.rest() if amt is None else self._tape.exactly(amt)
            if cache_content:
                self._body = data
            return data

        def read1(self, amt: int | None = None, decode_content: bool | None = None) -> bytes:
            return self._tape.piece(amt)

        def stream(self, amt: int | None = 2**16, decode_content: bool | None = None) -> Iterator[bytes]:
            while True:
                data = self._tape.piece(amt)
                if not data:
                    return
                yield data

        read_chunked = stream

        @property
        def data(self) -> bytes:
            if self._body is not None:
                return self._body
            return self.read(cache_content=True)

        def supports_chunked_reads(self) -> bool:
            return False

        def release_conn(self) -> None:
            pass

        def drain_conn(self) -> None:
            pass

        def tell(self) -> int:
            return self._tape.pos

    _tape_classes[id(module)] = TapeResponse
    return TapeResponse


def tape_response(
    module: Any, recorded: dict[str, Any], method: str, url: str, refuse: Callable[[str], BaseException]
) -> Any:
    """The recorded response as a urllib3 `HTTPResponse` that opened no connection."""
    headers = module.HTTPHeaderDict()
    for key, value in recorded.get("headers", []):
        headers.add(key, value)
    version = str(recorded.get("http_version") or "HTTP/1.1")
    response = _tape_class(module)(
        body=b"",
        headers=headers,
        status=recorded["status"],
        version={v: k for k, v in _VERSIONS.items()}.get(version, 11),
        version_string=version,
        reason=recorded.get("reason") or None,
        preload_content=False,
        decode_content=False,
        original_response=_Original(list(recorded.get("headers", []))),
        request_method=method,
        request_url=url,
    )
    body = recorded.get("body") or {}
    response._tape = BodyTape(body, refuse, _raised)
    if (
        body.get("complete")
        and "chunks" not in body
        and body.get("encoding") == "decoded"
        and not body.get("truncated")
    ):
        response._body = response._tape.rest()  # preloaded at capture: `.data` is there at once
    return response


def _raised(error: dict[str, Any]) -> BaseException:
    try:
        raise_recorded_error({"error": error})
    except BaseException as exc:
        return exc
    return RuntimeError(error.get("message", ""))  # pragma: no cover - raise_recorded_error always raises


def body_view(body: Any) -> bytes | None:
    """An upload as the matchers compare it: its bytes, or None when it is a stream that was not recorded."""
    recorded = request_body(body, 1 << 62)
    return None if recorded.get("streamed") else bytes(recorded["bytes"])


def take_request(
    scope: Scope, method: str, url: str, headers: Any, body: bytes | None
) -> tuple[Answering, AnyEvent, Callable[[str], BaseException]]:
    """Take the recorded fetch that answers this request: (replay session, event, refuse). The caller waits
    for the event's recorded turn (`session.turn` or `session.wait_turn`) before using its outcome.
    `body` is the upload's bytes (`body_view`), None when it cannot be compared."""
    frame = client_frame(3)
    here = scope.here()
    site = site_of(frame)
    session = here.session
    assert session is not None
    view = RequestView(method, url, _text_pairs(headers), body)
    call = f"{method.upper()} {url}"
    event = session.take(KIND, call, here.path, frame, site, match=http_matcher(view))
    here.recording.add(KIND, call, here.path, site, {})

    def refuse(reason: str) -> BaseException:
        return session.refuse(KIND, call, here.path, client_frame(3), reason)

    return session, event, refuse


def outcome_of(event: AnyEvent, refuse: Callable[[str], BaseException]) -> tuple[dict[str, Any] | None, Any]:
    """(response, error) of a taken fetch whose turn has come; a recording without either is refused (a
    `ReplayDivergence`), never an internal error raised into the app."""
    recorded, error = event["data"].get("response"), event.get("error")
    if recorded is None and error is None:
        raise refuse("the recording holds no answer for it")
    return recorded, error


def answer_request(
    scope: Scope, method: str, url: str, headers: Any, body: bytes | None
) -> tuple[dict[str, Any], dict[str, Any] | None, Callable[[str], BaseException]]:
    """Take the recorded fetch that answers this request and wait for its recorded turn (thread callers):
    (response, error, refuse) for the caller to build. A call still in flight when the recorded execution
    ended never completes: `PendingAtEnd` once the replayed execution ends."""
    session, event, refuse = take_request(scope, method, url, headers, body)
    session.wait_turn(event, "response")
    recorded, error = outcome_of(event, refuse)
    return recorded or {}, error, refuse


def elapsed_of(event_ns: int) -> datetime.timedelta:
    return datetime.timedelta(microseconds=event_ns / 1000)


# -- the patch -------------------------------------------------------------------------------------
def _pool_url(pool: Any, url: str) -> str:
    if not url.startswith("/"):
        return url  # absolute (a proxy, or assert_same_host=False with a full URL)
    scheme = getattr(pool, "scheme", "http")
    host = pool.host or ""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    port = pool.port
    netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    return f"{scheme}://{netloc}{url}"


def _urlopen_wrapper(module: Any, limit: Callable[[], int]) -> Callable[..., Any]:
    def arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, str, Any, Any]:
        """`urlopen(method, url, body=None, headers=None, ...)`'s first four, by position or keyword."""
        n = len(args)
        return (
            args[0] if n > 0 else kwargs["method"],
            args[1] if n > 1 else kwargs["url"],
            args[2] if n > 2 else kwargs.get("body"),
            args[3] if n > 3 else kwargs.get("headers"),
        )

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        scope = current()
        if scope is None:
            return wrapped(*args, **kwargs)
        try:
            method, path, body, headers = arguments(args, kwargs)
            url = _pool_url(instance, path)
            if headers is None:
                headers = instance.headers
        except Exception as exc:
            report_internal_error("urllib3 capture", exc)
            return wrapped(*args, **kwargs)
        if scope.session is not None:
            recorded, error, refuse = answer_request(scope, method, url, headers, body_view(body))
            if error is not None:
                raise _raised(error)
            assert recorded is not None
            return tape_response(module, recorded, method, url, refuse)
        entry = None
        try:
            entry = start_fetch(scope, "urllib3", method, url, headers, request_body(body, limit()), depth=4)
        except Exception as exc:
            report_internal_error("urllib3 capture", exc)
        token = scope_var.set(None)
        try:
            response = wrapped(*args, **kwargs)
        except BaseException as exc:
            scope_var.reset(token)
            fail_fetch(entry, exc, scope)
            raise
        scope_var.reset(token)
        record_response(entry, response, limit(), scope)
        return response

    return wrapper


class Urllib3Interceptor:
    kind = KIND

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        module = loaded("urllib3")
        pool = getattr(getattr(module, "connectionpool", None), "HTTPConnectionPool", None)
        self.module = module if pool is not None and hasattr(module, "HTTPHeaderDict") else None
        if self.module is not None:
            copy_headers_directly(module.HTTPHeaderDict, lines=True)
        self.modules = ("urllib3",) if self.module is not None else ()  # what the coverage report counts

    def patches(self) -> list[Patch]:
        if self.module is None:
            return []
        pool = self.module.connectionpool.HTTPConnectionPool
        replacement = wrap_client_method(vars(pool)["urlopen"], _urlopen_wrapper(self.module, self._limit))
        return [Patch(pool, "urlopen", replacement)]

    def rebind(self) -> dict[int, Any]:
        return {}
