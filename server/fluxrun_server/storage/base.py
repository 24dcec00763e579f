"""The object-store contract the server writes bundle segments to, and its errors (`open_store` is in `factory`).

Payloads are opaque, already-encrypted bytes; the store only has to keep them whole. Two backends
implement the contract: `FilesystemStore` (the embedded default) and `S3Store` (AWS S3, MinIO, OCI
Object Storage). Keys are checked the same way by both, so data can move between them unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

__all__ = ["ObjectNotFound", "ObjectStore", "ObjectStoreError", "check_key"]


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
