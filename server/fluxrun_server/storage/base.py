"""The object-store contract the server writes bundle segments to, its errors, and `open_store(url)`.

Payloads are opaque, already-encrypted bytes; the store only has to keep them whole. Two backends
implement the contract: `FilesystemStore` (the embedded default) and `S3Store` (AWS S3, MinIO, OCI
Object Storage). Keys are checked the same way by both, so data can move between them unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

__all__ = ["ObjectNotFound", "ObjectStore", "ObjectStoreError", "check_key", "open_store"]


class ObjectStoreError(Exception):
    """A store operation failed; the message names the backend and the key so an operator can find it."""

    def __init__(self, message: str, *, key: str | None = None, backend: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.backend = backend


class ObjectNotFound(ObjectStoreError):
    """The key holds no object (a separate type so callers can answer 404 instead of 500)."""


@runtime_checkable
class ObjectStore(Protocol):
    """Where sealed payloads live. Keys are "/"-separated relative names such as `segments/2026/01/02/x.seg`."""

    def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, replacing any old object; readers see the old or the new object, never a part."""

    def get(self, key: str) -> bytes:
        """The whole object; `ObjectNotFound` if there is none."""

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        """Exactly `length` bytes from `offset`, or `ObjectStoreError` (`ObjectNotFound` for a missing key)."""

    def delete(self, key: str) -> None:
        """Remove the object; deleting a missing key is not an error, so retries are safe."""

    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys that start with `prefix` (a plain string prefix, as in S3), in lexicographic order."""

    def exists(self, key: str) -> bool:
        """Whether `key` holds an object."""


_TEMP_SUFFIX = ".fluxrun-tmp"  # FilesystemStore's in-flight files; refused as key parts so they never clash


def check_key(key: str, backend: str) -> str:
    """Refuse keys that could escape a filesystem root or mean different objects on different backends."""
    if not isinstance(key, str) or not key:
        raise ObjectStoreError(f"{backend}: invalid object key {key!r}: empty", key=str(key), backend=backend)
    problem = None
    if key.startswith("/"):
        problem = "absolute keys are not allowed"
    elif "\\" in key or "\x00" in key:
        problem = "backslashes and NUL bytes are not allowed"
    else:
        for part in key.split("/"):
            if part in ("", ".", ".."):
                problem = "empty, '.' and '..' parts are not allowed"
                break
            if part.endswith(_TEMP_SUFFIX):
                problem = f"parts ending in {_TEMP_SUFFIX!r} are reserved for temporary files"
                break
    if problem:
        raise ObjectStoreError(f"{backend}: invalid object key {key!r}: {problem}", key=key, backend=backend)
    return key


def check_range(key: str, offset: int, length: int, backend: str) -> None:
    """Refuse negative ranges up front, so every backend fails the same way."""
    if offset < 0 or length < 0:
        raise ObjectStoreError(
            f"{backend}: invalid range for {key!r}: offset={offset} length={length} (both must be >= 0)",
            key=key,
            backend=backend,
        )


def open_store(url: str, **options: Any) -> ObjectStore:
    """Open the store a settings URL names: `file:///path` or a plain path, or `s3://bucket/prefix`.

    S3 options (`endpoint_url`, `region`, `access_key`, `secret_key`, ...) go to `S3Store`; the server passes
    them unconditionally, so for a filesystem URL they are accepted when unset and refused when set.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "s3":
        from fluxrun_server.storage.s3 import S3Store  # boto3 is slow to import: only when it is used

        if not parts.netloc:
            raise ValueError(f"object store URL {url!r} names no bucket (expected s3://bucket/prefix)")
        if parts.query or parts.fragment:
            raise ValueError(f"object store URL {url!r}: query strings and fragments are not supported")
        prefix = unquote(parts.path).lstrip("/")
        return S3Store(parts.netloc, prefix=prefix, **options)

    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"object store URL {url!r}: file URLs must be local (file:///path)")
        path = Path(unquote(parts.path))
    elif "://" in url:
        raise ValueError(f"object store URL {url!r}: unknown scheme {parts.scheme!r} (use file:// or s3://)")
    else:
        path = Path(url)
    unknown = {name for name, value in options.items() if value is not None and value is not False}
    if unknown:
        raise ValueError(f"options {sorted(unknown)} do not apply to the filesystem store {url!r}")
    from fluxrun_server.storage.filesystem import FilesystemStore

    return FilesystemStore(path.expanduser())
