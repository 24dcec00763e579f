"""`open_store(url)`: the object store a settings URL names. Apart from `base` so the backends import the
contract without a circle."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from fluxrun_server.storage.base import ObjectStore
from fluxrun_server.storage.filesystem import FilesystemStore

__all__ = ["open_store"]


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
    return FilesystemStore(path.expanduser())
