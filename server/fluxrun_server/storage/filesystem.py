"""`FilesystemStore`: objects as plain files under one root folder (the embedded, single-node default).

Key `a/b/c.seg` is the file `ROOT/a/b/c.seg`. A put writes a temporary file in the target folder,
fsyncs it, renames it over the key with `os.replace` and fsyncs the folder: a reader opens either the
old file or the new one, never a half-written one, and a crash leaves at worst a stray temporary file
(hidden from `list`). A reader that already opened the old file keeps reading the old bytes.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from fluxrun_server.storage.base import _TEMP_SUFFIX, ObjectNotFound, ObjectStoreError, check_key, check_range

__all__ = ["FilesystemStore"]


def _fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in `directory` durable (the file's own fsync does not cover its name)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory handles (Windows): nothing more to do
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class FilesystemStore:
    """An `ObjectStore` over a local folder; safe for many threads and processes on one machine."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.backend = f"filesystem store {self.root}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ObjectStoreError(
                f"{self.backend}: cannot create the root folder: {exc}", backend=self.backend
            ) from exc

    def __repr__(self) -> str:
        return f"FilesystemStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        check_key(key, self.backend)
        return self.root.joinpath(*key.split("/"))

    def _error(self, action: str, key: str, exc: BaseException) -> ObjectStoreError:
        return ObjectStoreError(f"{self.backend}: {action} {key!r} failed: {exc}", key=key, backend=self.backend)

    def _not_found(self, key: str) -> ObjectNotFound:
        return ObjectNotFound(f"{self.backend}: no object {key!r}", key=key, backend=self.backend)

    def _ensure_dir(self, directory: Path, key: str) -> None:
        """Create missing parent folders, fsyncing each new entry so the object stays reachable after a crash."""
        if directory.is_dir():
            return
        missing: builtins.list[Path] = []
        current = directory
        while not current.exists():
            missing.append(current)
            current = current.parent
        for folder in reversed(missing):
            with contextlib.suppress(FileExistsError):  # another writer made it meanwhile, or a file is in the way
                folder.mkdir()
            if not folder.is_dir():
                raise ObjectStoreError(
                    f"{self.backend}: cannot store {key!r}: {folder} exists and is not a folder",
                    key=key,
                    backend=self.backend,
                )
            _fsync_dir(folder.parent)
        if not directory.is_dir():
            raise ObjectStoreError(
                f"{self.backend}: cannot store {key!r}: a parent of {directory} is an object, not a folder",
                key=key,
                backend=self.backend,
            )

    def put(self, key: str, data: bytes) -> None:
        """Write to a temporary file, fsync, rename over the key, fsync the folder: all or nothing."""
        path = self._path(key)
        try:
            self._ensure_dir(path.parent, key)
            temp = path.parent / f".{secrets.token_hex(8)}{_TEMP_SUFFIX}"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
            try:
                try:
                    view = memoryview(data)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(temp, path)
            except BaseException:
                temp.unlink(missing_ok=True)
                raise
            _fsync_dir(path.parent)
        except ObjectStoreError:
            raise
        except OSError as exc:
            if path.is_dir():
                raise ObjectStoreError(
                    f"{self.backend}: cannot store {key!r}: a folder of other objects has that name",
                    key=key,
                    backend=self.backend,
                ) from exc
            raise self._error("put", key, exc) from exc

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise self._not_found(key) from exc
        except OSError as exc:
            if path.is_dir():  # Windows reports a folder as PermissionError
                raise self._not_found(key) from exc
            raise self._error("get", key, exc) from exc

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Seek and read exactly `length` bytes; a range past the end is an error, not a short read."""
        check_range(key, offset, length, self.backend)
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if offset + length > size:
                    raise ObjectStoreError(
                        f"{self.backend}: range {offset}+{length} is past the end of {key!r} ({size} bytes)",
                        key=key,
                        backend=self.backend,
                    )
                f.seek(offset)
                chunks: builtins.list[bytes] = []
                remaining = length
                while remaining:
                    chunk = f.read(remaining)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    remaining -= len(chunk)
        except ObjectStoreError:
            raise
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise self._not_found(key) from exc
        except OSError as exc:
            if path.is_dir():
                raise self._not_found(key) from exc
            raise self._error("get_range", key, exc) from exc
        if remaining:
            raise ObjectStoreError(
                f"{self.backend}: short read of {key!r}: got {length - remaining} of {length} bytes at {offset}",
                key=key,
                backend=self.backend,
            )
        return b"".join(chunks)

    def delete(self, key: str) -> None:
        """Unlink the file; a missing key is fine. Empty folders stay: pruning them would race concurrent puts."""
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        except IsADirectoryError:
            return
        except OSError as exc:
            if path.is_dir():
                return
            raise self._error("delete", key, exc) from exc
        _fsync_dir(path.parent)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> Iterator[str]:
        """Walk only the folders the prefix can reach, yielding keys in the same byte order S3 uses."""
        head, _, _ = prefix.rpartition("/")
        start = self.root
        start_key = ""
        if head:
            parts = head.split("/")
            if any(p in ("", ".", "..") or "\\" in p or "\x00" in p for p in parts):
                return  # no valid key can start with this prefix
            start = self.root.joinpath(*parts)
            start_key = head + "/"
        if not start.is_dir():
            return
        yield from self._walk(start, start_key, prefix)

    def _walk(self, directory: Path, base: str, prefix: str) -> Iterator[str]:
        try:
            with os.scandir(directory) as it:
                entries = builtins.list(it)
        except (FileNotFoundError, NotADirectoryError):
            return  # removed while listing
        except OSError as exc:
            raise self._error("list", base or "/", exc) from exc
        # Sorting folders as "name/" makes the depth-first walk emit keys in plain lexicographic order.
        named = sorted(
            (
                (e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e)
                for e in entries
                if not e.name.endswith(_TEMP_SUFFIX)
            ),
            key=lambda item: item[0],
        )
        for name, entry in named:
            key = base + name
            if name.endswith("/"):
                if key.startswith(prefix) or prefix.startswith(key):
                    yield from self._walk(Path(entry.path), key, prefix)
            elif key.startswith(prefix) and entry.is_file():
                yield key
