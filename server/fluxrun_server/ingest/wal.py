"""The ingest write-ahead log: an accepted bundle is acknowledged (202) only once it is here and fsynced.

Layout: a directory of segment files ``wal-<first_lsn:020d>.log`` plus a ``checkpoint`` file holding the
highest LSN the aggregator has fully stored (replaced atomically). A ``LOCK`` file keeps a second process
from writing to the same directory.

Frame: ``magic "FW" | u8 version | u8 flags | u32 length | u32 CRC32 | u64 LSN | payload``. The CRC covers
the version, flags, length and LSN as well as the payload, so a flipped LSN is caught like a flipped payload
byte. One writer thread group-commits: it drains everything queued, writes it with one ``write`` and makes
it durable with one ``fsync`` (a "unit"; a group that crosses a segment boundary is one unit per segment).
The first frame of a unit carries ``FLAG_FIRST`` and its last ``FLAG_LAST``. Only the newest unit can be torn
by a crash: the next unit is written only after the previous fsync returned. Recovery uses that: an invalid
frame in the newest segment is a torn tail (cut off) unless a *later* unit starts after it, which would
prove the damaged bytes had been acknowledged; that, and any damage in an older segment, is an error
naming the file and offset instead of silent data loss.

Durability rules the server relies on: a future resolves only after its fsync succeeded; a failed write or
fsync fails the group with `WALWriteError` and poisons the log (`healthy` is False, later appends fail with
`WALUnhealthyError`), because after a failed fsync the page cache state is unknown and a later fsync that
"succeeds" proves nothing. Running out of disk space before the group's bytes stuck is `WALFullError`, which
leaves the log healthy (the bytes written so far are cut off again first).

The aggregator runs in a process of its own and reads the segment files through a `WALReader`, never past
the durable LSN the writing process told it; it reports checkpoints back, and the writing process applies
them, so each file keeps one writer.

Idempotence is not the WAL's job: a client that retries after a lost 202, or after a failed group whose
bytes did reach the disk, appends the same bundle again under a new LSN. The aggregator drops duplicates by
bundle id when it indexes them.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import mmap
import os
import re
import struct
import threading
import time
import zlib
from array import array
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

__all__ = [
    "FLAG_FIRST",
    "FLAG_LAST",
    "HEADER_SIZE",
    "MAX_RECORD_BYTES",
    "RecoveryReport",
    "WALClosedError",
    "WALCorruptError",
    "WALError",
    "WALFullError",
    "WALReader",
    "WALStats",
    "WALUnhealthyError",
    "WALWriteError",
    "WriteAheadLog",
    "segment_name",
]

log = logging.getLogger("fluxrun_server.wal")

MAGIC = b"FW"
VERSION = 1
FLAG_FIRST = 0x01  # first frame of a write unit (one write + one fsync)
FLAG_LAST = 0x02  # last frame of a write unit
_HEADER = struct.Struct(">2sBBIIQ")  # magic, version, flags, length, crc, lsn
_CRC_FIELDS = struct.Struct(">BBIQ")  # version, flags, length, lsn: covered by the CRC with the payload
HEADER_SIZE = _HEADER.size
MAX_RECORD_BYTES = 2**31 - 1
_SEGMENT = re.compile(r"wal-(\d{20})\.log")
_CHECKPOINT = "checkpoint"
_CHECKPOINT_TMP = "checkpoint.tmp"
_LOCK = "LOCK"
_READ_BUFFER = 256 * 1024

WriteFn = Callable[[int, memoryview], int]
FsyncFn = Callable[[int], None]


class WALError(Exception):
    """Base class: the WAL could not accept or return records."""


class WALWriteError(WALError):
    """A write or fsync failed: the group is not durable and the log no longer accepts appends."""


class WALUnhealthyError(WALError):
    """An earlier write or fsync failed; this log refuses appends until the process reopens it."""


class WALFullError(WALError):
    """The disk is full; nothing of the group was kept and the log is still usable (retry later)."""


class WALClosedError(WALError):
    """The log is not open (yet, or any more)."""


class WALCorruptError(WALError):
    """A frame that may hold acknowledged data is damaged; names the file and byte offset."""

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"{path}: offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


@dataclass(frozen=True)
class RecoveryReport:
    """What `WriteAheadLog.open` found: records kept, the last LSN, bytes cut from a torn tail, segment count."""

    records: int
    last_lsn: int
    truncated_bytes: int
    segments: int


@dataclass(frozen=True)
class WALStats:
    """Counters since open: acknowledged appends and records, segment fsyncs, frame bytes made durable."""

    appends: int
    records: int
    fsyncs: int
    bytes: int


@dataclass(slots=True)
class _Pending:
    records: list[bytes]
    future: Future[list[int]]
    nbytes: int


@dataclass(slots=True)
class _Segment:
    first_lsn: int
    path: Path


def segment_name(first_lsn: int) -> str:
    return f"wal-{first_lsn:020d}.log"


def _crc(version: int, flags: int, length: int, lsn: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(_CRC_FIELDS.pack(version, flags, length, lsn)))


def _header(lsn: int, flags: int, payload: bytes) -> bytes:
    length = len(payload)
    return _HEADER.pack(MAGIC, VERSION, flags, length, _crc(VERSION, flags, length, lsn, payload), lsn)


def _parse(buf: mmap.mmap, off: int, size: int) -> tuple[int, int, int] | str:
    """(lsn, flags, end offset) of a valid frame at `off`, or the reason there is none (for the log)."""
    if size - off < HEADER_SIZE:
        return f"partial header ({size - off} of {HEADER_SIZE} bytes)"
    magic, version, flags, length, crc, lsn = _HEADER.unpack_from(buf, off)
    if magic != MAGIC:
        return "bad magic"
    if version != VERSION:
        return f"unknown frame version {version}"
    end = off + HEADER_SIZE + length
    if end > size:
        return f"short frame (length {length} runs {end - size} bytes past the end of the file)"
    if _crc(version, flags, length, lsn, buf[off + HEADER_SIZE : end]) != crc:
        return "bad CRC"
    return lsn, flags, end


def _later_unit(buf: mmap.mmap, start: int, size: int, after_lsn: int) -> int | None:
    """Offset of a valid unit-opening frame past a damaged one: proof that the damage was acknowledged."""
    pos = buf.find(MAGIC, start + 1)
    while pos != -1:
        frame = _parse(buf, pos, size)
        if not isinstance(frame, str) and frame[1] & FLAG_FIRST and frame[0] > after_lsn:
            return pos
        pos = buf.find(MAGIC, pos + 1)
    return None


class _FrameReader:
    """Reads frames of given LSN spans, validating each; remembers where the last read stopped, so a reader
    that pages through the log (the aggregator) does not walk a segment's headers again on every page."""

    def __init__(self, checkpointed: Callable[[], int]) -> None:
        self._checkpointed = checkpointed
        self._hint: tuple[int, int, int] = (-1, -1, 0)  # (next lsn, segment first lsn, byte offset)

    def read(self, start: int, spans: list[tuple[int, int, Path]], limit: int | None) -> Iterator[tuple[int, bytes]]:
        remaining = -1 if limit is None else limit
        lsn = start
        for first, last, path in spans:
            if remaining == 0:
                return
            try:
                file = open(path, "rb", buffering=_READ_BUFFER)  # noqa: SIM115 - closed by the with below
            except FileNotFoundError:
                if self._checkpointed() >= last:  # a concurrent checkpoint deleted it: nothing left to read
                    lsn = last + 1
                    continue
                raise WALCorruptError(path, 0, "segment vanished while reading") from None
            with file:
                offset = self._seek(file, path, first, lsn)
                while lsn <= last and remaining != 0:
                    header = file.read(HEADER_SIZE)
                    if len(header) < HEADER_SIZE:
                        raise WALCorruptError(path, offset, f"LSN {lsn} is missing (end of file)")
                    magic, version, flags, length, crc, frame_lsn = _HEADER.unpack(header)
                    payload = file.read(length)
                    if (
                        magic != MAGIC
                        or frame_lsn != lsn
                        or len(payload) != length
                        or _crc(version, flags, length, frame_lsn, payload) != crc
                    ):
                        raise WALCorruptError(path, offset, f"frame for LSN {lsn} is damaged")
                    offset += HEADER_SIZE + length
                    self._hint = (lsn + 1, first, offset)
                    yield lsn, payload
                    lsn += 1
                    remaining -= 1

    def _seek(self, file: BinaryIO, path: Path, first: int, lsn: int) -> int:
        """Byte offset of `lsn` in a segment: the last read's end if it stopped there, else a header walk."""
        hint_lsn, hint_first, hint_offset = self._hint
        offset = hint_offset if (hint_lsn, hint_first) == (lsn, first) else 0
        current = lsn if offset else first
        file.seek(offset)
        while current < lsn:
            header = file.read(HEADER_SIZE)
            if len(header) < HEADER_SIZE:
                raise WALCorruptError(path, offset, f"LSN {lsn} is missing (end of file)")
            magic, _version, _flags, length, _crc32, frame_lsn = _HEADER.unpack(header)
            if magic != MAGIC or frame_lsn != current:
                raise WALCorruptError(path, offset, f"expected the frame of LSN {current}")
            offset += HEADER_SIZE + length
            current += 1
            file.seek(offset)
        return offset


class WriteAheadLog:
    """Durable, group-committed append log of ingest records; see the module docstring for the guarantees.

    `_write` and `_fsync` are test hooks (the same signatures as `os.write` and `os.fsync`) so tests can
    simulate a failing fsync or a full disk; `_fsync` is used for every fsync the log makes.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_bytes: int = 64 * 1024 * 1024,
        group_window_s: float = 0.0,
        max_group_bytes: int = 16 * 1024 * 1024,
        _write: WriteFn = os.write,
        _fsync: FsyncFn = os.fsync,
    ) -> None:
        if segment_bytes <= 0 or max_group_bytes <= 0:
            raise ValueError("segment_bytes and max_group_bytes must be positive")
        if group_window_s < 0:
            raise ValueError("group_window_s must not be negative")
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.group_window_s = group_window_s
        self.max_group_bytes = max_group_bytes
        self._write = _write
        self._fsync = _fsync

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._checkpoint_lock = threading.Lock()
        self._state = "new"  # -> "open" -> "closed"
        self._closing = False
        self._queue: deque[_Pending] = deque()
        self._thread: threading.Thread | None = None
        self._lock_fd = -1
        self._fd = -1  # the active (newest) segment, opened O_APPEND
        self._active_size = 0
        self._segments: list[_Segment] = []
        self._durable_lsn = 0  # highest LSN whose fsync completed; the writer's next LSN is this + 1
        self._checkpointed = 0
        self._sizes = array("Q")  # frame sizes of LSNs checkpointed+1 .. durable, from index _sizes_head
        self._sizes_head = 0
        self._backlog_bytes = 0
        self._healthy = True
        self._last_error: BaseException | None = None
        self._disk_full = False  # the last write ran out of space (cleared by the next write that sticks)
        # (first LSN of a commit, when it was made durable): at most one entry a second, for the backlog's age
        self._arrivals: deque[tuple[int, float]] = deque()
        self._appends = self._records = self._fsyncs = self._bytes = 0
        self._reader = _FrameReader(lambda: self._checkpointed)

    # -- lifecycle -------------------------------------------------------------------------------------

    def open(self) -> RecoveryReport:
        """Validate every frame, cut a torn tail off the newest segment, and start the writer thread."""
        with self._lock:
            if self._state != "new":
                raise WALError("this WriteAheadLog was already opened; create a new instance to reopen")
            self._state = "opening"
        try:
            self._make_directory()
            self._lock_fd = self._acquire_dir_lock()
            report = self._recover()
        except BaseException:
            with self._lock:
                self._state = "new"
            self._close_fds()
            raise
        self._thread = threading.Thread(target=self._run, name="fluxrun-wal-writer", daemon=True)
        with self._lock:
            self._state = "open"
        self._thread.start()
        return report

    def close(self) -> None:
        """Write (or fail) everything already queued, stop the writer and release the directory."""
        with self._cond:
            if self._state == "new":
                self._state = "closed"
                return
            if self._state != "open":
                return
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._state = "closed"
        self._close_fds()

    def __enter__(self) -> Self:
        if self._state == "new":
            self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- appending -------------------------------------------------------------------------------------

    def append(self, records: Sequence[bytes]) -> Future[list[int]]:
        """Queue records for the next group commit; the future gets their LSNs once they are fsynced.

        Never blocks. Failures arrive through the future: WALWriteError, WALFullError, WALUnhealthyError
        (immediately, once the log is unhealthy) or WALClosedError.
        """
        batch: list[bytes] = []
        nbytes = 0
        for record in records:
            if not isinstance(record, bytes | bytearray | memoryview):
                raise TypeError(f"WAL records are bytes, not {type(record).__name__}")
            data = bytes(record)
            if len(data) > MAX_RECORD_BYTES:
                raise ValueError(f"a WAL record is at most {MAX_RECORD_BYTES} bytes, got {len(data)}")
            batch.append(data)
            nbytes += HEADER_SIZE + len(data)
        future: Future[list[int]] = Future()
        error: WALError | None = None
        with self._cond:
            if not self._healthy:
                error = WALUnhealthyError(f"the WAL is unhealthy after an earlier failure: {self._last_error}")
            elif self._state != "open" or self._closing:
                error = WALClosedError("the WAL is not open")
            elif batch:
                self._queue.append(_Pending(batch, future, nbytes))
                self._cond.notify()
        if error is not None:
            future.set_exception(error)
        elif not batch:
            future.set_result([])
        return future

    async def append_async(self, records: Sequence[bytes]) -> list[int]:
        """`append` for the event loop: returns the LSNs once the records are durable."""
        return await asyncio.wrap_future(self.append(records))

    # -- reading and checkpointing ---------------------------------------------------------------------

    def read_from(self, lsn_exclusive: int, max_records: int | None = None) -> Iterator[tuple[int, bytes]]:
        """Durable records after `lsn_exclusive` (and after the checkpoint), oldest first, across segments.

        The upper bound is fixed when this is called, so a group whose fsync has not completed is never
        returned, even though its bytes may already be in the file.
        """
        if max_records is not None and max_records < 0:
            raise ValueError("max_records must not be negative")
        with self._lock:
            if self._state != "open":
                raise WALClosedError("the WAL is not open")
            start = max(lsn_exclusive, self._checkpointed) + 1
            end = self._durable_lsn
            spans: list[tuple[int, int, Path]] = []
            for i, segment in enumerate(self._segments):
                last = self._segments[i + 1].first_lsn - 1 if i + 1 < len(self._segments) else end
                if last >= start and segment.first_lsn <= end:
                    spans.append((segment.first_lsn, min(last, end), segment.path))
        return self._reader.read(start, spans, max_records)

    def checkpoint(self, lsn: int) -> None:
        """Record that everything up to `lsn` is stored elsewhere; delete segments that hold nothing newer.

        A checkpoint lower than the current one is ignored. The active segment is never deleted.
        """
        with self._checkpoint_lock:
            with self._lock:
                if self._state != "open":
                    raise WALClosedError("the WAL is not open")
                if lsn > self._durable_lsn:
                    raise ValueError(f"cannot checkpoint LSN {lsn}: the log is durable only up to {self._durable_lsn}")
                if lsn <= self._checkpointed:
                    return
            try:
                self._write_checkpoint(lsn)
            except OSError as exc:
                raise WALError(f"could not write the WAL checkpoint: {exc}") from exc
            with self._lock:
                drop = lsn - self._checkpointed
                head = self._sizes_head
                self._backlog_bytes -= sum(self._sizes[head : head + drop])
                self._sizes_head += drop
                if self._sizes_head > 4096 and self._sizes_head * 2 > len(self._sizes):
                    del self._sizes[: self._sizes_head]
                    self._sizes_head = 0
                self._checkpointed = lsn
                while len(self._arrivals) > 1 and self._arrivals[1][0] <= lsn + 1:
                    self._arrivals.popleft()
                doomed: list[_Segment] = []
                while len(self._segments) > 1 and self._segments[1].first_lsn - 1 <= lsn:
                    doomed.append(self._segments.pop(0))
            for segment in doomed:
                segment.path.unlink(missing_ok=True)
            if doomed:
                log.debug("WAL checkpoint %d: deleted %d segment(s)", lsn, len(doomed))
                try:
                    self._fsync_dir()
                except OSError as exc:  # a deletion that does not stick only costs disk space
                    log.warning("WAL: fsync of %s after deleting segments failed: %s", self.directory, exc)

    # -- state -----------------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """False once a write or fsync failed: this node must stop acknowledging bundles."""
        return self._healthy

    @property
    def last_error(self) -> BaseException | None:
        return self._last_error

    @property
    def checkpointed_lsn(self) -> int:
        return self._checkpointed

    @property
    def last_lsn(self) -> int:
        """The highest durable (acknowledgeable) LSN."""
        return self._durable_lsn

    @property
    def backlog_records(self) -> int:
        """Acknowledged records not yet checkpointed: what the aggregator still has to store."""
        with self._lock:
            return self._durable_lsn - self._checkpointed

    @property
    def backlog_bytes(self) -> int:
        """Frame bytes of the acknowledged records not yet checkpointed (drives the 429 backpressure)."""
        with self._lock:
            return self._backlog_bytes

    @property
    def oldest_backlog_age_s(self) -> float:
        """Seconds since the oldest record not yet checkpointed was made durable (0 without a backlog;
        up to a second high). /healthz reports indexing as stuck when this grows past a threshold."""
        with self._lock:
            if self._durable_lsn <= self._checkpointed or not self._arrivals:
                return 0.0
            return time.monotonic() - self._arrivals[0][1]

    @property
    def disk_full(self) -> bool:
        """The last write ran out of disk space (and no write has succeeded since)."""
        return self._disk_full

    @property
    def stats(self) -> WALStats:
        with self._lock:
            return WALStats(self._appends, self._records, self._fsyncs, self._bytes)

    # -- recovery --------------------------------------------------------------------------------------

    def _make_directory(self) -> None:
        """Create the directory durably: a new entry can vanish on power loss until its parent is fsynced."""
        created = [p for p in (self.directory, *self.directory.parents) if not p.exists()]
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in reversed(created):
            self._fsync_path(path.parent)

    def _acquire_dir_lock(self) -> int:
        fd = os.open(self.directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WALError(f"{self.directory} is in use by another WriteAheadLog") from None
        return fd

    def _recover(self) -> RecoveryReport:
        self._sizes = array("Q")
        self._sizes_head = 0
        checkpointed = self._read_checkpoint()
        (self.directory / _CHECKPOINT_TMP).unlink(missing_ok=True)
        segments = sorted(
            (_Segment(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _SEGMENT.fullmatch(p.name))),
            key=lambda s: s.first_lsn,
        )
        if segments and segments[0].first_lsn > checkpointed + 1:
            raise WALCorruptError(
                segments[0].path,
                0,
                f"the oldest segment starts at LSN {segments[0].first_lsn} but the checkpoint is {checkpointed}: "
                f"records {checkpointed + 1}..{segments[0].first_lsn - 1} are missing",
            )
        last_lsn = checkpointed
        records = truncated = end = 0
        for i, segment in enumerate(segments):
            if i and segment.first_lsn != last_lsn + 1:
                raise WALCorruptError(
                    segment.path,
                    0,
                    f"starts at LSN {segment.first_lsn}, the previous segment ends at {last_lsn}: records are missing",
                )
            count, last_lsn, end, cut = self._scan(segment, i == len(segments) - 1, checkpointed)
            records += count
            truncated += cut
        if last_lsn < checkpointed:
            raise WALCorruptError(
                segments[-1].path, end, f"the log ends at LSN {last_lsn} but the checkpoint is {checkpointed}"
            )
        if not segments:
            segment = _Segment(checkpointed + 1, self.directory / segment_name(checkpointed + 1))
            os.close(os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            self._fsync_dir()
            segments.append(segment)
        self._segments = segments
        self._fd = os.open(segments[-1].path, os.O_WRONLY | os.O_APPEND)
        self._active_size = end
        self._durable_lsn = last_lsn
        self._checkpointed = checkpointed
        self._backlog_bytes = sum(self._sizes)
        if last_lsn > checkpointed:  # their arrival times are gone: count their age from this start
            self._arrivals.append((checkpointed + 1, time.monotonic()))
        log.info(
            "WAL %s: %d records in %d segment(s), last LSN %d, checkpoint %d",
            self.directory,
            records,
            len(segments),
            last_lsn,
            checkpointed,
        )
        return RecoveryReport(records=records, last_lsn=last_lsn, truncated_bytes=truncated, segments=len(segments))

    def _scan(self, segment: _Segment, is_last: bool, checkpointed: int) -> tuple[int, int, int, int]:
        """(records, last LSN, valid end offset, bytes truncated) of one segment, validating every frame."""
        path = segment.path
        lsn = segment.first_lsn - 1
        count = off = 0
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size == 0:
                return 0, lsn, 0, 0
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                reason = ""
                while off < size:
                    frame = _parse(buf, off, size)
                    if isinstance(frame, str):
                        reason = frame
                        break
                    frame_lsn, _flags, end = frame
                    if frame_lsn != lsn + 1:
                        raise WALCorruptError(path, off, f"frame has LSN {frame_lsn}, expected {lsn + 1}")
                    if frame_lsn > checkpointed:
                        self._sizes.append(end - off)
                    lsn, off, count = frame_lsn, end, count + 1
                if off == size:
                    return count, lsn, off, 0
                if not is_last:
                    raise WALCorruptError(
                        path, off, f"{reason} in a segment that is not the newest: acknowledged records would be lost"
                    )
                later = _later_unit(buf, off, size, lsn)
                if later is not None:
                    raise WALCorruptError(
                        path,
                        off,
                        f"{reason}, but a later write starts at offset {later}: the damaged records were acknowledged",
                    )
        fd = os.open(path, os.O_RDWR)
        try:
            os.ftruncate(fd, off)
            self._fsync(fd)
        finally:
            os.close(fd)
        log.warning(
            "WAL: truncated a torn tail of %s at offset %d (%s): %d bytes dropped, last LSN %d",
            path,
            off,
            reason,
            size - off,
            lsn,
        )
        return count, lsn, off, size - off

    def _read_checkpoint(self) -> int:
        path = self.directory / _CHECKPOINT
        try:
            text = path.read_text("ascii")
        except FileNotFoundError:
            return 0
        except (OSError, UnicodeDecodeError) as exc:
            raise WALCorruptError(path, 0, f"unreadable checkpoint: {exc}") from exc
        if not text.endswith("\n") or not text[:-1].isdigit():
            raise WALCorruptError(path, 0, f"malformed checkpoint {text[:40]!r}")
        return int(text)

    def _write_checkpoint(self, lsn: int) -> None:
        tmp = self.directory / _CHECKPOINT_TMP
        data = memoryview(f"{lsn}\n".encode("ascii"))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            while data:
                data = data[os.write(fd, data) :]
            self._fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.directory / _CHECKPOINT)
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        self._fsync_path(self.directory)

    def _fsync_path(self, directory: Path) -> None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            self._fsync(fd)
        finally:
            os.close(fd)

    def _close_fds(self) -> None:
        for name in ("_fd", "_lock_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                os.close(fd)  # closing the lock file releases the flock

    # -- the writer thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                if self.group_window_s > 0 and not self._closing:
                    deadline = time.monotonic() + self.group_window_s
                    while not self._closing and sum(p.nbytes for p in self._queue) < self.max_group_bytes:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                group: list[_Pending] = []
                size = 0
                while self._queue and (not group or size + self._queue[0].nbytes <= self.max_group_bytes):
                    pending = self._queue.popleft()
                    size += pending.nbytes
                    if pending.future.set_running_or_notify_cancel():  # False: cancelled, so never written
                        group.append(pending)
            if not group:
                continue
            try:
                self._commit(group)
            except Exception as exc:  # a bug here must fail the futures, not leave requests hanging
                log.exception("WAL writer failed unexpectedly")
                self._poison(exc, [p for p in group if not p.future.done()])

    def _commit(self, group: list[_Pending]) -> None:
        """Write and fsync one group (one unit per segment it touches), then resolve the futures it covers."""
        if not self._healthy:
            self._fail(group, WALUnhealthyError, f"the WAL is unhealthy: {self._last_error}", self._last_error)
            return
        payloads = [record for pending in group for record in pending.records]
        ends: list[int] = []  # index one past each pending's last record
        for pending in group:
            ends.append((ends[-1] if ends else 0) + len(pending.records))
        first_lsn = self._durable_lsn + 1
        done = 0  # pendings resolved so far
        pos = 0
        while pos < len(payloads):
            full = self._active_size > 0 and self._active_size + HEADER_SIZE + len(payloads[pos]) > self.segment_bytes
            if full and not self._rotate(first_lsn + pos, group[done:]):
                return
            stop, unit = pos, 0
            while stop < len(payloads):
                frame = HEADER_SIZE + len(payloads[stop])
                if stop > pos and self._active_size + unit + frame > self.segment_bytes:
                    break
                unit += frame
                stop += 1
            parts: list[bytes] = []
            sizes = array("Q")
            for i in range(pos, stop):
                flags = (FLAG_FIRST if i == pos else 0) | (FLAG_LAST if i == stop - 1 else 0)
                parts += (_header(first_lsn + i, flags, payloads[i]), payloads[i])
                sizes.append(HEADER_SIZE + len(payloads[i]))
            if not self._write_unit(b"".join(parts), group[done:]):
                return
            resolved: list[tuple[Future[list[int]], list[int]]] = []
            with self._lock:
                now = time.monotonic()
                if self._durable_lsn <= self._checkpointed:  # no backlog before this commit
                    self._arrivals.clear()
                if not self._arrivals or now - self._arrivals[-1][1] >= 1.0:
                    self._arrivals.append((first_lsn + pos, now))
                self._disk_full = False
                self._durable_lsn = first_lsn + stop - 1
                self._active_size += unit
                self._sizes.extend(sizes)
                self._backlog_bytes += unit
                self._fsyncs += 1
                self._bytes += unit
                self._records += stop - pos
                while done < len(group) and ends[done] <= stop:
                    begin = ends[done - 1] if done else 0
                    resolved.append((group[done].future, list(range(first_lsn + begin, first_lsn + ends[done]))))
                    self._appends += 1
                    done += 1
            for future, lsns in resolved:
                future.set_result(lsns)
            pos = stop

    def _write_unit(self, data: bytes, pending: list[_Pending]) -> bool:
        """Append and fsync one unit; on failure fail `pending` and say so (False)."""
        start = self._active_size
        view = memoryview(data)
        written = 0
        try:
            while written < len(data):
                n = self._write(self._fd, view[written:])
                if n <= 0:
                    raise OSError(errno.EIO, "write() made no progress")
                written += n
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                self._poison(exc, pending)
                return False
            if written:  # cut the partial unit off again so the log stays a clean prefix
                try:
                    os.ftruncate(self._fd, start)
                    self._fsync(self._fd)
                except OSError as undo:
                    self._poison(undo, pending)
                    return False
            log.warning("WAL: disk full, %d record batch(es) refused: %s", len(pending), exc)
            self._disk_full = True
            self._fail(pending, WALFullError, f"the WAL disk is full: {exc}", exc)
            return False
        try:
            self._fsync(self._fd)
        except OSError as exc:
            self._poison(exc, pending)
            return False
        return True

    def _rotate(self, first_lsn: int, pending: list[_Pending]) -> bool:
        """Start segment `first_lsn` (the previous one is already fsynced); on failure fail `pending`."""
        path = self.directory / segment_name(first_lsn)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                self._disk_full = True
                self._fail(pending, WALFullError, f"the WAL disk is full: {exc}", exc)
            else:
                self._poison(exc, pending)
            return False
        try:
            self._fsync_dir()  # the new file must survive a crash before anything in it is acknowledged
        except OSError as exc:
            os.close(fd)
            self._poison(exc, pending)
            return False
        old = self._fd
        with self._lock:
            self._segments.append(_Segment(first_lsn, path))
            self._fd = fd
            self._active_size = 0
        os.close(old)
        return True

    def _poison(self, exc: BaseException, pending: list[_Pending]) -> None:
        with self._lock:
            self._healthy = False
            self._last_error = exc
        log.error("WAL write failed; this node stops acknowledging bundles until restarted: %s", exc)
        self._fail(pending, WALWriteError, f"the WAL write failed: {exc}", exc)

    @staticmethod
    def _fail(pending: list[_Pending], kind: type[WALError], message: str, cause: BaseException | None) -> None:
        for item in pending:
            error = kind(message)  # one instance each: a raised exception collects a traceback
            error.__cause__ = cause
            item.future.set_exception(error)


class WALReader:
    """The durable records of a WAL that another process writes: what the aggregator process reads.

    The writing process says how far the log is durable (`advance`); a record past that is never returned,
    even when its bytes are already in the file, because its fsync may not have happened (a crash would cut
    it off and its LSN would be used again). `checkpoint(lsn)` notes that everything up to `lsn` is stored
    and hands the LSN to `on_checkpoint`: the writing process's `WriteAheadLog.checkpoint` writes the
    checkpoint file and deletes segments, so every file of the log keeps a single writer. It deletes only
    segments at or below a checkpoint this reader reported, and this reader reads only above it.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        checkpointed: int,
        durable: int,
        on_checkpoint: Callable[[int], None],
    ) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._checkpointed = checkpointed
        self._durable = max(durable, checkpointed)
        self._on_checkpoint = on_checkpoint
        self._reader = _FrameReader(lambda: self._checkpointed)

    def advance(self, durable_lsn: int) -> None:
        """The writer made everything up to `durable_lsn` durable (a lower value than already known is ignored)."""
        with self._lock:
            self._durable = max(self._durable, durable_lsn)

    @property
    def checkpointed_lsn(self) -> int:
        return self._checkpointed

    @property
    def last_lsn(self) -> int:
        """The highest LSN the writer said is durable."""
        return self._durable

    def read_from(self, lsn_exclusive: int, max_records: int | None = None) -> Iterator[tuple[int, bytes]]:
        """Durable records after `lsn_exclusive` (and after the checkpoint), oldest first, across segments."""
        if max_records is not None and max_records < 0:
            raise ValueError("max_records must not be negative")
        with self._lock:
            start = max(lsn_exclusive, self._checkpointed) + 1
            end = self._durable
        if start > end:
            return iter(())
        firsts = sorted(int(m.group(1)) for name in os.listdir(self.directory) if (m := _SEGMENT.fullmatch(name)))
        spans: list[tuple[int, int, Path]] = []
        for i, first in enumerate(firsts):
            last = firsts[i + 1] - 1 if i + 1 < len(firsts) else end
            if last >= start and first <= end:
                spans.append((first, min(last, end), self.directory / segment_name(first)))
        if not spans or spans[0][0] > start:
            raise WALCorruptError(self.directory, 0, f"no segment holds LSN {start} (durable up to {end})")
        return self._reader.read(start, spans, max_records)

    def checkpoint(self, lsn: int) -> None:
        """Everything up to `lsn` is stored: report it to the writer. A lower checkpoint than known is ignored."""
        with self._lock:
            if lsn > self._durable:
                raise ValueError(f"cannot checkpoint LSN {lsn}: the log is durable only up to {self._durable}")
            if lsn <= self._checkpointed:
                return
        self._on_checkpoint(lsn)
        with self._lock:
            self._checkpointed = max(self._checkpointed, lsn)
