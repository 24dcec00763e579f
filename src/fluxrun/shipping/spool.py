"""The spool: sealed bundles waiting on local disk while the server cannot take them.

It is bounded by files and bytes. When it is full the *newest* bundle is refused (the caller counts it
as dropped): the oldest are kept, because they show how an incident began, and a bundle already on
disk is never deleted undelivered. File names sort oldest first, which is the delivery order.

Several processes of one app (gunicorn workers) may share the folder. Each adds files atomically (a
temporary name, then a rename), and one process at a time drains it while holding an `flock` on
`.lock`; the kernel releases that lock when the process dies, so no claim is ever left stale.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from time import monotonic  # bound at import: FluxRun's own bookkeeping never calls a patched clock

from fluxrun._internal import wall_time
from fluxrun.shipping.base import after_fork_in_child

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no pre-fork servers, one process per spool
    fcntl = None  # type: ignore[assignment]

__all__ = ["Spool", "SpoolEntry"]

SUFFIX = ".fluxrun"


@dataclass(frozen=True)
class SpoolEntry:
    path: Path
    name: str  # the bundle's own file name, as the sink was given it
    data: bytes


class Spool:
    """A bounded folder of bundles, oldest first. Thread-safe; counts are rescanned now and then because
    other processes add and remove files too, so the bound may be overshot by a few bundles per process."""

    def __init__(self, directory: Path, *, max_files: int, max_bytes: int, rescan_every: float = 5.0) -> None:
        self.directory = directory
        self.max_files = max_files
        self.max_bytes = max_bytes
        self._rescan_every = rescan_every
        self._reset()
        after_fork_in_child(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._files = 0
        self._bytes = 0
        self._scanned_at: float | None = None
        self._seq = 0
        self._claim_fd: int | None = None

    def _after_fork_in_child(self) -> None:
        fd = self._claim_fd
        self._reset()
        if fd is not None:
            # The parent's drain still holds the lock through its own descriptor; closing the child's
            # copy does not release it (flock belongs to the open file description).
            os.close(fd)

    # -- counts -----------------------------------------------------------------------------------
    def _names(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.directory) if n.endswith(SUFFIX) and not n.startswith("."))
        except OSError:  # not created yet, or unusable: nothing to deliver from it
            return []

    def rescan(self) -> tuple[int, int]:
        files = size = 0
        try:
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    if entry.name.endswith(SUFFIX) and not entry.name.startswith("."):
                        try:
                            size += entry.stat().st_size
                            files += 1
                        except OSError:  # delivered by another process meanwhile
                            pass
        except OSError:  # not created yet, or unusable
            pass
        with self._lock:
            self._files, self._bytes, self._scanned_at = files, size, monotonic()
        return files, size

    def usage(self) -> tuple[int, int]:
        """(files, bytes) in the spool, from a scan at most `rescan_every` seconds old."""
        scanned = self._scanned_at
        if scanned is None or monotonic() - scanned > self._rescan_every:
            return self.rescan()
        with self._lock:
            return self._files, self._bytes

    # -- adding -----------------------------------------------------------------------------------
    def put(self, name: str, data: bytes) -> bool:
        """Add one bundle; False when the spool is full (the newest is refused). Raises OSError on a disk error."""
        self.usage()
        with self._lock:
            if self._files + 1 > self.max_files or self._bytes + len(data) > self.max_bytes:
                return False
            self._files += 1
            self._bytes += len(data)
            self._seq += 1
            seq = self._seq
        # microseconds of wall time, then pid and a counter: names sort in the order bundles were spooled
        filename = f"{int(wall_time() * 1_000_000):017d}-{os.getpid()}-{seq:08d}-{name}{SUFFIX}"
        tmp = self.directory / f".{filename}.tmp"
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self.directory / filename)
        except BaseException:
            with self._lock:
                self._files -= 1
                self._bytes -= len(data)
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
        return True

    # -- draining ---------------------------------------------------------------------------------
    @contextmanager
    def claim(self) -> Iterator[bool]:
        """Yield True if this process may drain the spool now (no other process is draining it)."""
        if fcntl is None:  # pragma: no cover - Windows
            yield True
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            yield False
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            yield False
            return
        self._claim_fd = fd
        try:
            yield True
        finally:
            self._claim_fd = None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def oldest(self, max_count: int, max_bytes: int) -> tuple[list[SpoolEntry], list[Path]]:
        """The oldest bundles, up to `max_count` and `max_bytes` (at least one), and unreadable files found
        on the way (empty ones, left by a crash of the machine mid-write): call with `claim()` held."""
        entries: list[SpoolEntry] = []
        unreadable: list[Path] = []
        total = 0
        for filename in self._names():
            path = self.directory / filename
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            except OSError:
                unreadable.append(path)
                continue
            if not data:
                unreadable.append(path)
                continue
            if entries and total + len(data) > max_bytes:
                break
            parts = filename[: -len(SUFFIX)].split("-", 3)
            entries.append(SpoolEntry(path, parts[3] if len(parts) == 4 else filename[: -len(SUFFIX)], data))
            total += len(data)
            if len(entries) >= max_count:
                break
        return entries, unreadable

    def remove(self, paths: list[Path]) -> None:
        for path in paths:
            try:
                size = path.stat().st_size
                path.unlink()
            except OSError:  # gone already (another process), or not ours to remove: the rescan will tell
                continue
            with self._lock:
                self._files = max(0, self._files - 1)
                self._bytes = max(0, self._bytes - size)
