"""HTTP fetches through requests: `HTTPAdapter.send`, the transport under `Session.send`.

`Session.send` keeps its own logic at capture and replay alike (redirects, cookies, hooks, reading the
body when `stream=False`); each request it hands its adapter is one recorded fetch, a redirect one per
hop. Capture is suspended while the adapter runs, so the urllib3 pool under it records nothing more:
one fetch is one event. The body is recorded as the app reads it through `response.raw`, piece by
piece (`iter_content`, `iter_lines`, `.content`), up to where it stopped.

At replay the adapter answers from the recording before urllib3 is reached: matched by method, URL and
body within the task, the response built by requests' own `build_response` around a `TapeResponse`,
and a recorded error raised again as the same requests exception (`requests.ConnectionError`, ...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fluxrun._context import current, scope_var
from fluxrun._internal import report_internal_error
from fluxrun.interceptors.base import Patch, loaded, raise_recorded_error, wrap_client_method
from fluxrun.interceptors.hot_path import end_call
from fluxrun.interceptors.http_stream import request_body
from fluxrun.interceptors.urllib3 import (
    answer_request,
    body_view,
    copy_headers_directly,
    fail_fetch,
    record_response,
    start_fetch,
    tape_response,
)

__all__ = ["RequestsInterceptor"]

KIND = "http"


def _rebuild_error(module: Any, error: dict[str, Any], request: Any) -> BaseException:
    module_name, _, qualname = str(error.get("type", "")).partition(":")
    cls = getattr(module.exceptions, qualname, None) if module_name.split(".")[0] == "requests" else None
    if isinstance(cls, type) and issubclass(cls, module.exceptions.RequestException):
        return cls(error.get("message", ""), request=request)  # type: ignore[no-any-return]
    try:
        raise_recorded_error({"error": error})
    except BaseException as exc:
        return exc
    return RuntimeError(error.get("message", ""))  # pragma: no cover - raise_recorded_error always raises


def _send_wrapper(module: Any, urllib3: Any, limit: Callable[[], int]) -> Callable[..., Any]:
    urllib3_response = urllib3.response.HTTPResponse

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        scope = current()
        if scope is None:
            return wrapped(*args, **kwargs)
        request: Any = args[0] if args else kwargs.get("request")
        if scope.session is not None:
            recorded, error, refuse = answer_request(
                scope, request.method, request.url, request.headers, body_view(request.body)
            )
            if error is not None:
                raise _rebuild_error(module, error, request)
            assert recorded is not None
            raw = tape_response(urllib3, recorded, request.method, request.url, refuse)
            return instance.build_response(request, raw)
        entry = None
        size = limit()
        try:  # `send(request, stream=False, ...)`: every positional parameter is in `args`
            stream = bool(args[1] if len(args) > 1 else kwargs.get("stream", False))
            body = request_body(request.body, size)
            entry = start_fetch(scope, "requests", request.method, request.url, request.headers, body, stream, depth=4)
        except Exception as exc:
            report_internal_error("requests capture", exc)
        token = scope_var.set(None)
        try:
            response = wrapped(*args, **kwargs)
        except BaseException as exc:
            scope_var.reset(token)
            fail_fetch(entry, exc, scope)
            raise
        scope_var.reset(token)
        raw = getattr(response, "raw", None)
        if isinstance(raw, urllib3_response):
            record_response(entry, raw, size, scope)
        elif entry is not None and end_call(entry, scope):  # an adapter not on urllib3 underneath: the head only
            entry.value["response"] = {
                "status": response.status_code,
                "reason": response.reason or "",
                "headers": list(response.headers.items()),
                "body": {"bytes": b"", "size": None, "complete": False},
            }
        return response

    return wrapper


class RequestsInterceptor:
    kind = KIND

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        module = loaded("requests")
        adapter = getattr(getattr(module, "adapters", None), "HTTPAdapter", None)
        self.urllib3 = loaded("urllib3") if adapter is not None else None
        self.module = module if self.urllib3 is not None else None
        self.modules = ("requests",) if self.module is not None else ()  # what the coverage report counts
        headers = getattr(getattr(module, "structures", None), "CaseInsensitiveDict", None)
        if self.module is not None and isinstance(headers, type):
            copy_headers_directly(headers, lines=False)

    def patches(self) -> list[Patch]:
        if self.module is None or self.urllib3 is None:
            return []
        adapter = self.module.adapters.HTTPAdapter
        replacement = wrap_client_method(vars(adapter)["send"], _send_wrapper(self.module, self.urllib3, self._limit))
        return [Patch(adapter, "send", replacement)]

    def rebind(self) -> dict[int, Any]:
        return {}
