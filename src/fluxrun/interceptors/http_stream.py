"""Response bodies as the app consumed them, piece by piece: shared by the requests, urllib3 and aiohttp interceptors.

At capture a `ConsumedBody` keeps every piece the client handed the app, with its boundary, up to where
the app stopped: an app that abandons a stream half-way (it raises inside its loop over the chunks) still
leaves what it read in the recording. At replay a `BodyTape` hands back the same pieces at the same
boundaries; reading past what was recorded is a divergence that names the real cause (the app stopped
there, or the body was cut at the size limit), and a recorded read error is raised again where it happened.
A read that was still waiting for data when its task was cancelled (a sibling's error ended a `gather`)
is marked, and at replay the same read waits until it is cancelled again (`BodyTape.pend`).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Mapping
from types import FrameType, MappingProxyType
from typing import Any

from fluxrun._internal import is_plumbing, report_internal_error
from fluxrun.interceptors.hot_path import error_fields
from fluxrun.model.export import body_bytes
from fluxrun.model.schema import EventError

__all__ = ["NO_BODY", "BodyTape", "ConsumedBody", "client_frame", "recorded_body", "request_body", "snapshot"]

# Packages between the app and the wire: a call's site is the first frame outside them (the app's line).
CLIENT_PACKAGES = frozenset({"requests", "urllib3", "botocore", "boto3", "s3transfer", "aiohttp", "stripe"})


def client_frame(depth: int = 2) -> FrameType | None:
    """The frame that made the HTTP call: past FluxRun, wrapt and the HTTP client packages themselves (else
    the nearest client package's frame). One set lookup per frame, by file: a file's frames share a verdict
    (the walk is `first_app_frame`'s)."""
    try:
        frame: FrameType | None = sys._getframe(depth)
    except ValueError:
        return None
    skipped, app = _client_skipped_files, _client_app_files
    walk: Any = frame
    try:
        while True:
            while (name := walk.f_code.co_filename) in skipped:
                walk = walk.f_back
            if name in app or _client_verdict(walk) == _APP_FRAME:
                return walk  # type: ignore[no-any-return]
            walk = walk.f_back
    except AttributeError:  # walked off the top
        pass  # no app frame (a library's own thread): the nearest client package's
    while frame is not None and _client_verdict(frame) != _CLIENT_FRAME:
        frame = frame.f_back
    return frame


# Per file, for `client_frame`: FluxRun or wrapt's plumbing / an HTTP client package / other; the files found
# so far of the first two kinds (walked past), and of the other
_PLUMBING_FRAME, _CLIENT_FRAME, _APP_FRAME = 0, 1, 2
_client_skipped_files: set[str] = set()
_client_app_files: set[str] = set()


def _client_verdict(frame: FrameType) -> int:
    if is_plumbing(frame):
        verdict = _PLUMBING_FRAME
    elif frame.f_globals.get("__name__", "").partition(".")[0] in CLIENT_PACKAGES:
        verdict = _CLIENT_FRAME
    else:
        verdict = _APP_FRAME
    filename = frame.f_code.co_filename
    if not filename.startswith("<"):  # code compiled from a string: one name for many modules, never cached
        (_client_app_files if verdict == _APP_FRAME else _client_skipped_files).add(filename)
    return verdict


def snapshot(content: bytes, limit: int) -> dict[str, Any]:
    """A body as recorded: bytes up to `limit`, the full size, and a truncation mark."""
    out: dict[str, Any] = {"bytes": content[:limit], "size": len(content)}
    if len(content) > limit:
        out["truncated"] = True
    return out


# The upload of a request without a body, shared by every such request (read-only: one dict less held per
# call until its execution ends; made a dict of its own when the execution is sealed)
NO_BODY: Mapping[str, Any] = MappingProxyType({"bytes": b"", "size": 0})


def request_body(body: Any, limit: int) -> Mapping[str, Any]:
    """An upload as recorded: bytes and str as they are; a seekable file read up to the limit and rewound;
    anything else (a generator, a socket) is marked streamed and not read, since reading it would consume it."""
    if body is None:
        return NO_BODY
    if isinstance(body, str):
        return snapshot(body.encode("utf-8"), limit)
    if isinstance(body, (bytes, bytearray, memoryview)):
        return snapshot(bytes(body), limit)
    try:
        position = body.tell()
        content = body.read(limit + 1)
        body.seek(position)
    except Exception:
        return {"bytes": b"", "size": None, "streamed": True}
    if isinstance(content, str):
        content = content.encode("utf-8")
    if len(content) > limit:
        return {"bytes": content[:limit], "size": None, "truncated": True}
    return snapshot(content, limit)


class ConsumedBody:
    """The capture side of a response body: each piece the app was handed, kept as it reads.

    It sits in the response's data from the start (`{"body": consumed}`), so a stream the app abandons is
    recorded up to where it stopped. A read costs an append and an addition: the pieces are the bytes
    objects the app got (immutable: nothing is copied), up to `limit` bytes in all, and `recorded()` makes
    the body's fields of them only if the execution is kept (most are dropped)."""

    __slots__ = ("complete", "encoding", "error", "limit", "pieces", "size", "sizes", "was_cancelled")

    def __init__(self, limit: int, encoding: str | None = None) -> None:
        self.pieces: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.sizes: list[int] | None = None  # every piece's size, once the pieces no longer all fit
        self.complete = False
        self.encoding = encoding  # "decoded" or "raw": what the app was handed; set by the first read if None
        self.error: EventError | None = None
        self.was_cancelled = False

    def piece(self, data: bytes) -> None:
        try:  # free unless it raises (CPython 3.11's exception tables): a fault here never reaches the app's read
            size = len(data)
            if not size:
                return
            total = self.size = self.size + size
            if total <= self.limit and self.sizes is None:
                self.pieces.append(data if type(data) is bytes else bytes(data))  # a bytearray may change later
            else:
                self._past_limit(data, size)
        except Exception as exc:
            report_internal_error("http stream capture", exc)

    def _past_limit(self, data: Any, size: int) -> None:
        """A piece read once the pieces kept reach the limit: its size only (the one that crosses the limit
        kept up to it)."""
        if self.sizes is None:
            self.sizes = [len(kept) for kept in self.pieces]
            room = self.limit - (self.size - size)
            if room > 0:
                self.pieces.append(bytes(data[:room]))
        self.sizes.append(size)

    def end(self) -> None:
        self.complete = True

    def cancelled(self) -> None:
        """A read was waiting for more of the body when its task was cancelled."""
        self.was_cancelled = True

    def fail(self, exc: BaseException) -> None:
        try:
            self.error = error_fields(exc)
        except Exception as internal:
            report_internal_error("http stream capture", internal)

    def recorded(self) -> dict[str, Any]:
        """The body's fields as recorded (a new dict each time: an execution's events may be read twice)."""
        body: dict[str, Any] = {
            "bytes": b"".join(self.pieces),
            "size": self.size,
            "chunks": list(self.sizes) if self.sizes is not None else [len(piece) for piece in self.pieces],
            "complete": self.complete,
        }
        if self.size > self.limit:
            body["truncated"] = True
        if self.encoding is not None:
            body["encoding"] = self.encoding
        if self.error is not None:
            body["error"] = self.error
        if self.was_cancelled:
            body["cancelled"] = True
        return body


def recorded_body(body: Any) -> Any:
    """A response's `body` as sealed: a `ConsumedBody`'s fields, anything else as it is."""
    return body.recorded() if type(body) is ConsumedBody else body


class _Pending(Exception):
    """Inside `BodyTape.pend`: this read was waiting when its task was cancelled at capture."""


class BodyTape:
    """The replay side of a response body: the recorded pieces, at their recorded boundaries.

    `piece(limit)` gives up to the next boundary (what one read of the live stream returned), `exactly(n)`
    spans boundaries as a read that fills its buffer does, `line()` reads through the next newline.
    At the end of what was recorded: end of stream if the body was complete, else `refuse(reason)` or the
    recorded read error.
    """

    def __init__(
        self,
        body: dict[str, Any] | None,
        refuse: Callable[[str], BaseException],
        rebuild_error: Callable[[dict[str, Any]], BaseException],
    ) -> None:
        body = body or {}
        self.data = body_bytes(body)
        self.ends: list[int] = []
        total = 0
        for size in body.get("chunks") or ([len(self.data)] if self.data else []):
            total = min(total + int(size), len(self.data))
            if not self.ends or total > self.ends[-1]:
                self.ends.append(total)
        if self.ends and self.ends[-1] < len(self.data):
            self.ends.append(len(self.data))
        self.pos = 0
        self.body = body
        self.refuse = refuse
        self.rebuild_error = rebuild_error
        self._may_pend = False  # inside `pend`: a read past the end may wait instead of diverging

    @property
    def complete(self) -> bool:
        return bool(self.body.get("complete", True)) and not self.body.get("truncated") and "error" not in self.body

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def _past_the_end(self) -> BaseException:
        body = self.body
        if self._may_pend and body.get("cancelled"):
            return _Pending()
        if "error" in body:
            return self.rebuild_error(body["error"])
        if body.get("truncated"):
            return self.refuse(
                f"the recorded response body was cut at the size limit ({len(self.data)} of {body.get('size')} "
                "bytes kept) and the code reads past that: raise max_body_size (FLUXRUN_MAX_BODY_SIZE) where "
                "it is captured"
            )
        return self.refuse(
            f"at capture the app stopped reading this streamed response after {len(self.data)} bytes in "
            f"{len(self.ends)} pieces (it left the stream there), so the recording has nothing beyond that "
            "point, and the code now reads further"
        )

    async def pend(self, read: Callable[..., Any], *args: Any) -> Any:
        """`read(*args)` for an asyncio reader: past the end of a body whose next read was cancelled at
        capture, the read never completes (only cancellation ends it, as it did) instead of diverging."""
        self._may_pend = True
        try:
            return read(*args)
        except _Pending:
            pass
        finally:
            self._may_pend = False
        await asyncio.get_running_loop().create_future()

    def _end(self) -> bytes:
        if self.complete:
            return b""
        raise self._past_the_end()

    def piece(self, limit: int | None = None) -> bytes:
        if self.at_end():
            return self._end()
        stop = next(end for end in self.ends if end > self.pos)
        if limit is not None and limit >= 0:
            stop = min(stop, self.pos + limit)
        out, self.pos = self.data[self.pos : stop], stop
        return out

    def exactly(self, n: int) -> bytes:
        if self.at_end():
            return self._end()
        if self.pos + n > len(self.data) and not self.complete:
            raise self._past_the_end()
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def rest(self) -> bytes:
        if self.at_end():
            return self._end()
        if not self.complete:
            raise self._past_the_end()
        out, self.pos = self.data[self.pos :], len(self.data)
        return out

    def line(self, separator: bytes = b"\n", limit: int = -1) -> bytes:
        if self.at_end():
            return self._end()
        found = self.data.find(separator, self.pos)
        stop = len(self.data) if found < 0 else found + len(separator)
        if limit is not None and limit >= 0:
            stop = min(stop, self.pos + limit)
        if found < 0 and not self.complete and (limit is None or limit < 0 or stop - self.pos < limit):
            raise self._past_the_end()
        out, self.pos = self.data[self.pos : stop], stop
        return out
