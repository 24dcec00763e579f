"""`FluxRunWSGIMiddleware`: capture each request of a WSGI app (Flask, Django's WSGI handler, ...).

Wrap the app: `app.wsgi_app = FluxRunWSGIMiddleware(app.wsgi_app)` for Flask. The execution spans
the app call and the iteration of its response body (a streamed body may still do IO), and ends
when the server closes the response iterable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fluxrun._capture import record_error
from fluxrun._client import begin, end
from fluxrun._context import scope_var
from fluxrun._internal import report_internal_error
from fluxrun.middleware.frameworks import ROUTE, hook_frameworks, take_handled
from fluxrun.middleware.request import declare_entry, find_entry, mark_entry

__all__ = ["FluxRunWSGIMiddleware"]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]


class _RecordedInput:
    """Tees `wsgi.input` reads up to the body limit."""

    def __init__(self, inner: Any, limit: int) -> None:
        self.inner, self.limit, self.size = inner, limit, 0
        self.chunks: list[bytes] = []

    def _keep(self, data: bytes) -> bytes:
        try:
            room = self.limit - sum(len(c) for c in self.chunks)
            if room > 0:
                self.chunks.append(data[:room])
            self.size += len(data)
        except Exception as exc:
            report_internal_error("recording a WSGI request body", exc)
        return data

    def read(self, *args: Any) -> bytes:
        return self._keep(self.inner.read(*args))

    def readline(self, *args: Any) -> bytes:
        return self._keep(self.inner.readline(*args))

    def drain(self, content_length: str | None) -> None:
        """Read what the app left unread (up to the limit), so a kept execution has the whole body."""
        if not content_length or not content_length.isdigit():
            return
        remaining = min(int(content_length), self.limit) - self.size
        while remaining > 0:
            data = self.inner.read(remaining)
            if not data:
                break
            self._keep(data)
            remaining -= len(data)

    def readinto(self, buffer: Any) -> int | None:
        count: int | None = self.inner.readinto(buffer)
        if count:
            self._keep(bytes(memoryview(buffer)[:count]))
        return count

    def readlines(self, *args: Any) -> list[bytes]:
        return [self._keep(line) for line in self.inner.readlines(*args)]

    def __iter__(self) -> Iterator[bytes]:
        for line in self.inner:
            yield self._keep(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class FluxRunWSGIMiddleware:
    def __init__(self, app: Callable[[Environ, StartResponse], Iterable[bytes]], *, entry: str | None = None) -> None:
        self.app = app
        self.entry = entry
        for marked in (self, app, getattr(app, "__self__", None)):  # Flask: the app whose wsgi_app this wraps
            if marked is not None:
                mark_entry(marked)  # replay may call what this middleware wraps when a bundle names it
        if entry:
            declare_entry(entry)
        hook_frameworks()  # Flask and Django answer 500 themselves: hear the exception they handled

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        started = begin("wsgi", self.entry)
        if started is None:
            return self.app(environ, start_response)
        client, recording, token = started
        limit = client.options.max_body_size
        response: dict[str, Any] = {}
        body_input: _RecordedInput | None = None
        try:
            headers = [
                [key[5:].replace("_", "-").lower(), str(value)]
                for key, value in environ.items()
                if key.startswith("HTTP_")
            ]
            for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                if environ.get(key):
                    headers.append([key.replace("_", "-").lower(), str(environ[key])])
            recording.request = {
                "method": environ.get("REQUEST_METHOD"),
                "path": environ.get("PATH_INFO", ""),
                "root_path": environ.get("SCRIPT_NAME", ""),
                "query_string": environ.get("QUERY_STRING", ""),
                "scheme": environ.get("wsgi.url_scheme", "http"),
                "http_version": str(environ.get("SERVER_PROTOCOL", "")).removeprefix("HTTP/"),
                "server": [environ.get("SERVER_NAME"), environ.get("SERVER_PORT")],
                "headers": headers,
            }
            if "wsgi.input" in environ:
                body_input = _RecordedInput(environ["wsgi.input"], limit)
                environ["wsgi.input"] = body_input
        except Exception as exc:
            report_internal_error("recording a WSGI request", exc)

        def start_recorded(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            try:
                code = int(status.split(" ", 1)[0])
                response.update(status=code, reason=status.partition(" ")[2], headers=[list(h) for h in headers])
                recording.outcome["status"] = code
            except Exception as exc:
                report_internal_error("recording a WSGI response", exc)
            if exc_info is not None:
                return start_response(status, headers, exc_info)
            return start_response(status, headers)

        def finish(exc: BaseException | None, chunks: list[bytes], size: int, *, reset: bool = False) -> None:
            handled = take_handled(recording.outcome)
            if exc is not None:
                record_error(client, recording, exc)
                recording.outcome.setdefault("status", 500)
            elif handled is not None and recording.outcome.get("status", 500) >= 500:
                record_error(client, recording, handled)  # the framework answered 500 for this exception
            elif not recording.outcome.get("kind"):
                recording.outcome["kind"] = "ok" if recording.outcome.get("status", 500) < 500 else "http_5xx"
            kept = client.keep(recording)
            try:
                if kept and body_input is not None:
                    body_input.drain(environ.get("CONTENT_LENGTH"))
                route = environ.get(ROUTE)  # Flask's rule or Django's route, noted by their signals
                recording.request["route"] = route or recording.request.get("path")
                if body_input is not None:
                    body = b"".join(body_input.chunks)
                    recording.request["body"] = {"bytes": body, "size": body_input.size}
                    if body_input.size > len(body):
                        recording.request["body"]["truncated"] = True
                if response:
                    out = b"".join(chunks)
                    response["body"] = {
                        "bytes": out,
                        "size": size,
                        **({"truncated": True} if size > len(out) else {}),
                    }
                    recording.outcome["response"] = response
                if recording.entry is None:
                    # the middleware itself when a module holds it (Django's `application = ...`), else the app
                    # whose `wsgi_app` it wraps (Flask: replay calls `app` itself), else the app it wraps
                    owner = getattr(self.app, "__self__", None)
                    recording.entry = self.entry or find_entry(self, owner, self.app)
            except Exception as internal:
                report_internal_error("finishing a WSGI capture", internal)
            end(started, reset=reset, kept=kept)

        try:
            iterable = self.app(environ, start_recorded)
        except BaseException as exc:
            finish(exc, [], 0, reset=True)
            raise
        scope = scope_var.get()
        scope_var.reset(token)  # the body is iterated later, possibly elsewhere: re-enter the scope per chunk
        return _RecordedBody(iterable, scope, limit, finish)


class _RecordedBody:
    """The app's response iterable, with the capture scope active while each chunk is produced."""

    def __init__(self, inner: Iterable[bytes], scope: Any, limit: int, finish: Callable[..., None]) -> None:
        self.inner, self.scope, self.limit, self.finish = inner, scope, limit, finish
        self.chunks: list[bytes] = []
        self.size = 0
        self.iterator: Iterator[bytes] | None = None
        self.done = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self.iterator is None:
            self.iterator = iter(self.inner)
        token = scope_var.set(self.scope)
        try:
            chunk = next(self.iterator)
        except StopIteration:
            raise
        except BaseException as exc:
            self._end(exc)
            raise
        finally:
            scope_var.reset(token)
        try:
            if self.size < self.limit:
                self.chunks.append(chunk[: self.limit - self.size])
            self.size += len(chunk)
        except Exception as exc:
            report_internal_error("recording a WSGI response body", exc)
        return chunk

    def close(self) -> None:
        try:
            close = getattr(self.inner, "close", None)
            if close is not None:
                close()
        finally:
            self._end(None)

    def _end(self, exc: BaseException | None) -> None:
        if not self.done:
            self.done = True
            self.finish(exc, self.chunks, self.size)
