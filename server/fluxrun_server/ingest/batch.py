"""The ingest batch: what a shipper POSTs to /v1/executions, read with limits enforced as it arrives.

Body: one or more bundles, each preceded by its length as a 4-byte big-endian integer
(`application/x-fluxrun-batch`), optionally compressed (`Content-Encoding: zstd` or `gzip`).
Starlette and uvicorn set no body limit, so the reader counts bytes while the body streams in and
stops at the limit (413) before the whole body is in memory; decompression has its own cap, on its output.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import AsyncIterator

import zstandard

__all__ = ["BatchError", "TooLarge", "decode_batch", "decompress", "encode_batch", "read_limited"]

_LENGTH = struct.Struct(">I")
STEP_BYTES = 256 * 1024  # inflated output produced per step, before the limit is checked again
MAX_ZSTD_WINDOW = 8 * 1024 * 1024  # the decoder allocates the window a frame asks for; the SDK's need far less


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
    """The batch inside `body`, inflated in steps of at most `STEP_BYTES` of output, stopped past `limit`.

    Bounded by output, not input: 32 KB of zstd can hold a GiB of zeros, so a cap checked after each input
    step is checked too late. Every zstd frame and every gzip member is decoded (a concatenation is still
    one stream), within the same limit. Blocking work: the server calls it off the event loop.
    """
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("identity", ""):
        return body
    if encoding == "zstd":
        return _inflate_zstd(body, limit)
    if encoding == "gzip":
        return _inflate_gzip(body, limit)
    raise BatchError(f"Content-Encoding {encoding!r} is not supported; use zstd, gzip or none")


def _too_large(limit: int) -> TooLarge:
    return TooLarge(f"batch decompresses to more than {limit} bytes; send smaller batches")


def _inflate_zstd(body: bytes, limit: int) -> bytes:
    out = bytearray()
    try:
        reader = zstandard.ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW).stream_reader(
            body, read_across_frames=True
        )
        while step := reader.read(STEP_BYTES):
            out += step
            if len(out) > limit:
                raise _too_large(limit)
    except zstandard.ZstdError as exc:
        raise BatchError(
            f"body is not valid zstd (frames with windows over {MAX_ZSTD_WINDOW} bytes are refused): {exc}"
        ) from None
    return bytes(out)


def _inflate_gzip(body: bytes, limit: int) -> bytes:
    out = bytearray()
    rest = body
    try:
        while rest:
            member = zlib.decompressobj(wbits=31)
            while not member.eof:
                step = member.decompress(rest, STEP_BYTES)
                rest = member.unconsumed_tail
                out += step
                if len(out) > limit:
                    raise _too_large(limit)
                if not step and not rest:
                    raise BatchError("body is not valid gzip: it ends inside a member")
            rest = member.unused_data
    except zlib.error as exc:
        raise BatchError(f"body is not valid gzip: {exc}") from None
    return bytes(out)


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
