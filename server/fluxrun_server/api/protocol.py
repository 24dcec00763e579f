"""uvicorn's HTTP protocol with a deadline and a size limit for a request's line and headers.

uvicorn times out idle keep-alive connections, but not a connection that opens and then sends its headers
a byte at a time (slowloris): each one holds a socket and its buffers for as long as the sender likes, and
the headers can grow without bound. ASGI middleware cannot help, as the app is called only once the headers
are complete. So: from the moment a connection opens (or a new request on it begins), its headers must be
complete within `header_timeout_s` (408) and within `max_header_bytes` (431); then the connection is closed.
The body's deadline is `fluxrun_server.api.edge`'s.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["edge_protocol"]


def edge_protocol(header_timeout_s: float, max_header_bytes: int) -> type[HttpToolsProtocol]:
    """The protocol class to give uvicorn (`uvicorn.run(..., http=edge_protocol(...))`)."""

    class EdgeHttpToolsProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None
        _awaiting_headers = True
        _header_bytes = 0  # of the request line and headers parsed so far
        _unparsed_bytes = 0  # read while the headers were incomplete

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._start_header_clock()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_header_clock()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            # Between requests uvicorn's keep-alive timeout covers the wait; the next request's clock starts here.
            super().on_message_begin()
            if not self._awaiting_headers:
                self._start_header_clock()

        def on_url(self, url: bytes) -> None:
            self._header_bytes += len(url)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_bytes += len(name) + len(value)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            too_large = self._header_bytes > max_header_bytes
            self._stop_header_clock()
            if too_large:  # headers that arrived at once, complete: refused before the app sees them
                self._refuse(431, f"the request line and headers are over {max_header_bytes} bytes")
                return
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self.transport.is_closing():  # after a refusal the rest of what was read is dropped
                super().on_body(body)

        def on_message_complete(self) -> None:
            if not self.transport.is_closing():
                super().on_message_complete()

        def data_received(self, data: bytes) -> None:
            unparsed = len(data) if self._awaiting_headers else 0
            super().data_received(data)
            if self._awaiting_headers and not self.transport.is_closing():
                # headers still incomplete after this read: count what arrived, not only what was parsed (a
                # header that never ends is not reported by the parser)
                self._unparsed_bytes += unparsed
                if self._unparsed_bytes > max_header_bytes:
                    self._refuse(431, f"the request line and headers are over {max_header_bytes} bytes")

        def _start_header_clock(self) -> None:
            self._awaiting_headers = True
            self._header_bytes = self._unparsed_bytes = 0
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)

        def _stop_header_clock(self) -> None:
            self._awaiting_headers = False
            self._header_bytes = self._unparsed_bytes = 0
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if not self._awaiting_headers or self.transport.is_closing():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                # a pipelined request's headers while the previous answer is still being made: wait for that
                self._header_timer = self.loop.call_later(header_timeout_s, self._headers_late)
                return
            self._refuse(408, f"the request headers did not arrive within {header_timeout_s:g} s")

        def _refuse(self, status: int, detail: str) -> None:
            self._stop_header_clock()
            reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
            body = b'{"detail":"' + detail.encode() + b'"}'
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n%s" % (status, reason, len(body), body)
            )
            self.transport.close()

    return EdgeHttpToolsProtocol
