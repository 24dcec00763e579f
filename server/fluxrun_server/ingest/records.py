"""The WAL record of an accepted bundle: the project it was accepted for, then the bundle bytes."""

from __future__ import annotations

import struct

__all__ = ["pack_record", "unpack_record"]

_PROJECT = struct.Struct(">I")


def pack_record(project_id: int, bundle: bytes) -> bytes:
    return _PROJECT.pack(project_id) + bundle


def unpack_record(record: bytes) -> tuple[int, bytes]:
    (project_id,) = _PROJECT.unpack_from(record)
    return project_id, record[_PROJECT.size :]
