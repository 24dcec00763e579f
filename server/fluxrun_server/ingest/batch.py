"""The ingest batch: what a shipper POSTs to /v1/executions, read with limits enforced as it arrives.

Body: one or more bundles, each preceded by its length as a 4-byte big-endian integer
(`application/x-fluxrun-batch`), optionally compressed (`Content-Encoding: zstd` or `gzip`).
Starlette and uvicorn set no body limit, so the reader counts bytes while the body streams in and
stops at the limit (413) before the whole body is in memory; decompression has its own cap.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import AsyncIterator

import zstandard

__all__ = ["BatchError", "TooLarge", "decode_batch", "encode_batch", "read_limited"]

_LENGTH = struct.Struct(">I")


class BatchError(ValueError):
    """The batch cannot be read; the message says what is wrong with it."""


class TooLarge(BatchError):
    """Over a size limit (the server answers 413)."""


async def read_limited(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    received = bytearray()
    async for chunk in chunks:
        received += chunk
        if len(received) > limit:
            raise TooLarge(f"request body is over the {limit} byte limit; send smaller batches")
    return bytes(received)


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("identity", ""):
        return body
    if encoding == "zstd":
        try:
            reader = zstandard.ZstdDecompressor().decompressobj()
            out = bytearray()
            view = memoryview(body)
            for start in range(0, len(body), 65536):  # bounded steps: a bomb is stopped at the cap
                out += reader.decompress(view[start : start + 65536])
                if len(out) > limit:
                    raise TooLarge(f"batch decompresses to more than {limit} bytes")
            return bytes(out)
        except zstandard.ZstdError as exc:
            raise BatchError(f"body is not valid zstd: {exc}") from None
    if encoding == "gzip":
        inflater = zlib.decompressobj(wbits=31)
        try:
            inflated = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise BatchError(f"body is not valid gzip: {exc}") from None
        if len(inflated) > limit or inflater.unconsumed_tail:
            raise TooLarge(f"batch decompresses to more than {limit} bytes")
        return inflated
    raise BatchError(f"Content-Encoding {encoding!r} is not supported; use zstd, gzip or none")


def decode_batch(data: bytes, *, max_bundles: int, max_bundle_bytes: int) -> list[bytes]:
    bundles: list[bytes] = []
    position = 0
    while position < len(data):
        if len(data) - position < _LENGTH.size:
            raise BatchError(f"batch ends inside a length prefix at byte {position}")
        (length,) = _LENGTH.unpack_from(data, position)
        position += _LENGTH.size
        if length > max_bundle_bytes:
            raise TooLarge(f"bundle {len(bundles) + 1} is {length} bytes, over the {max_bundle_bytes} byte limit")
        if len(data) - position < length:
            raise BatchError(f"bundle {len(bundles) + 1} says {length} bytes but only {len(data) - position} follow")
        bundles.append(data[position : position + length])
        position += length
        if len(bundles) > max_bundles:
            raise TooLarge(f"batch has more than {max_bundles} bundles; send smaller batches")
    if not bundles:
        raise BatchError("batch is empty: send at least one length-prefixed bundle")
    return bundles


def encode_batch(bundles: list[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(b)) + b for b in bundles)
