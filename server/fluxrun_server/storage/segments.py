"""Segments: many sealed payloads packed into one object, so object counts and PUT costs stay low.

The aggregator adds payloads to a `SegmentWriter` and flushes it; each payload gets a `Placement`
(object key, offset, length, sha256) that the SQL index keeps. `read_payload` fetches one payload
with a ranged read of exactly its bytes and checks its length and hash. `read_index` rebuilds the
placements from the segment object alone, so the index can be recovered from the bucket.

Segment format, version 1 (all integers big-endian)::

    offset 0    8 bytes   magic b"FLUXSEG1"
    offset 8    4 bytes   N, length of the index in bytes (uint32)
    offset 12   32 bytes  SHA-256 of the index bytes (a damaged index is refused, not misread)
    offset 44   N bytes   index: UTF-8 JSON, e.g.
                          {"format": 1, "created_ms": 1764288000000, "data_bytes": 30,
                           "fields": ["bundle_id", "offset", "length", "sha256"],
                           "payloads": [["b1", 0, 10, "<hex>"], ["b2", 10, 20, "<hex>"]]}
    offset 44+N           payload bytes, back to back, in index order

Offsets in the index count from the start of the payload area (44 + N), so the index does not depend
on its own size; `Placement.offset` is absolute within the object. Keys look like
`segments/2026/11/28/<unix_ms, 13 digits>-<16 hex>.seg`: sortable by time and unique across writers.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import struct
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fluxrun_server.storage.base import ObjectStore, ObjectStoreError

__all__ = ["MAGIC", "Placement", "SegmentWriter", "read_index", "read_payload"]

MAGIC = b"FLUXSEG1"
_HEADER = struct.Struct(">8sI32s")
_FIELDS = ["bundle_id", "offset", "length", "sha256"]
_MAX_INDEX_BYTES = 64 * 1024 * 1024  # a sanity bound: a corrupt length must not make recovery fetch gigabytes


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one payload lives: the SQL index stores exactly these fields per bundle."""

    bundle_id: str
    key: str
    offset: int
    length: int
    sha256: str  # hex


class SegmentWriter:
    """Buffers payloads and writes them as segment objects on `flush()`.

    `add` does no I/O. `flush` writes one segment, or several when the buffer holds more than
    `target_bytes` (each segment stays near that size, one oversized payload gets a segment to itself),
    and returns the placements only after every object is stored: a failed flush keeps the buffer so
    the caller can retry, and objects it did write are orphans that recovery may ignore.
    """

    def __init__(self, store: ObjectStore, *, prefix: str = "segments/", target_bytes: int = 8 * 1024 * 1024) -> None:
        if target_bytes <= 0:
            raise ValueError("target_bytes must be positive")
        self.store = store
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.target_bytes = target_bytes
        self._pending: list[tuple[str, bytes]] = []
        self._ids: set[str] = set()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def buffered_bytes(self) -> int:
        return self._bytes

    @property
    def full(self) -> bool:
        """True once a flush would write at least one full-size segment (for callers that stream)."""
        return self._bytes >= self.target_bytes

    def add(self, bundle_id: str, payload: bytes) -> None:
        """Buffer one payload; a bundle id may appear once per flush, so its placement is unambiguous."""
        if not isinstance(bundle_id, str) or not bundle_id:
            raise ValueError(f"bundle_id must be a non-empty string, not {bundle_id!r}")
        if bundle_id in self._ids:
            raise ValueError(f"bundle {bundle_id!r} was already added to this segment writer")
        self._ids.add(bundle_id)
        self._pending.append((bundle_id, bytes(payload)))
        self._bytes += len(payload)

    def flush(self) -> list[Placement]:
        """Write the buffered payloads and return one placement per payload, in the order they were added."""
        groups: list[list[tuple[str, bytes]]] = []
        group: list[tuple[str, bytes]] = []
        size = 0
        for item in self._pending:
            if group and item[1] and size + len(item[1]) > self.target_bytes:  # empty payloads never split
                groups.append(group)
                group, size = [], 0
            group.append(item)
            size += len(item[1])
        if group:
            groups.append(group)
        placements: list[Placement] = []
        for items in groups:
            key = self._new_key()
            data, group_placements = encode_segment(key, items)
            self.store.put(key, data)
            placements.extend(group_placements)
        self._pending, self._ids, self._bytes = [], set(), 0
        return placements

    def _new_key(self) -> str:
        now_ms = time.time_ns() // 1_000_000
        day = datetime.fromtimestamp(now_ms / 1000, tz=UTC).strftime("%Y/%m/%d")
        return f"{self.prefix}{day}/{now_ms:013d}-{secrets.token_hex(8)}.seg"


def encode_segment(key: str, items: list[tuple[str, bytes]]) -> tuple[bytes, list[Placement]]:
    """Build one segment object and the placements of its payloads (pure: no I/O, easy to test)."""
    rows: list[list[Any]] = []
    relative = 0
    for bundle_id, payload in items:
        rows.append([bundle_id, relative, len(payload), hashlib.sha256(payload).hexdigest()])
        relative += len(payload)
    index = json.dumps(
        {
            "format": 1,
            "created_ms": time.time_ns() // 1_000_000,
            "data_bytes": relative,
            "fields": _FIELDS,
            "payloads": rows,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")
    header = _HEADER.pack(MAGIC, len(index), hashlib.sha256(index).digest())
    start = len(header) + len(index)
    placements = [Placement(row[0], key, start + row[1], row[2], row[3]) for row in rows]
    return b"".join([header, index, *(payload for _, payload in items)]), placements


def read_payload(store: ObjectStore, placement: Placement) -> bytes:
    """Fetch one payload with a ranged read and check its length and SHA-256 before anyone decrypts it."""
    data = store.get_range(placement.key, placement.offset, placement.length)
    if len(data) != placement.length or hashlib.sha256(data).hexdigest() != placement.sha256.lower():
        raise ObjectStoreError(
            f"payload for bundle {placement.bundle_id} in {placement.key} is corrupt "
            f"(expected {placement.length} bytes with sha256 {placement.sha256}, "
            f"got {len(data)} bytes with sha256 {hashlib.sha256(data).hexdigest()})",
            key=placement.key,
        )
    return data


def read_index(store: ObjectStore, key: str) -> list[Placement]:
    """Rebuild the placements of a segment from its header and index alone (two small ranged reads)."""

    def bad(reason: str) -> ObjectStoreError:
        return ObjectStoreError(f"segment {key} has a damaged or unknown index: {reason}", key=key)

    try:
        magic, length, digest = _HEADER.unpack(store.get_range(key, 0, _HEADER.size))
    except ObjectStoreError as exc:
        if type(exc) is not ObjectStoreError:  # ObjectNotFound and other subclasses stay as they are
            raise
        raise bad(f"no header ({exc})") from exc
    if magic != MAGIC:
        raise bad(f"magic {magic!r}, expected {MAGIC!r}")
    if length > _MAX_INDEX_BYTES:
        raise bad(f"index length {length} is implausible")
    try:
        raw = store.get_range(key, _HEADER.size, length)
    except ObjectStoreError as exc:
        if type(exc) is not ObjectStoreError:
            raise
        raise bad(f"truncated index ({exc})") from exc
    if hashlib.sha256(raw).digest() != digest:
        raise bad("index checksum mismatch")
    try:
        index = json.loads(raw)
        if index.get("format") != 1 or index.get("fields") != _FIELDS:
            raise bad(f"format {index.get('format')!r} with fields {index.get('fields')!r}")
        start = _HEADER.size + length
        expected = 0
        placements: list[Placement] = []
        for bundle_id, offset, size, sha256 in index["payloads"]:
            if offset != expected or not isinstance(size, int) or size < 0:
                raise bad(f"payload {bundle_id!r} at {offset}+{size} does not follow the previous one")
            placements.append(Placement(str(bundle_id), key, start + offset, size, str(sha256)))
            expected += size
        if expected != index.get("data_bytes"):
            raise bad(f"payloads add up to {expected} bytes, index says {index.get('data_bytes')}")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise bad(f"{type(exc).__name__}: {exc}") from exc
    return placements
