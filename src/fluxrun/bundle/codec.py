"""Payload bytes: JSON (orjson) compressed with zstd, and a decoder that cannot be zip-bombed.

The encoder runs in the app on every captured failure, so it reuses one compressor per thread
(zstandard compressor objects are not thread-safe, and building one per call costs more than compressing
16 KiB). The decoder runs on whatever a bundle carries, so it never produces or allocates more than the
caller's limit, whatever the frame claims.
"""

from __future__ import annotations

import threading
from typing import Any

import orjson
import zstandard

from fluxrun.errors import BundleError

__all__ = ["MAX_WINDOW_SIZE", "ZSTD_LEVEL", "decode_payload", "decode_sized", "encode_payload"]

# Level 1: on event logs it compresses within a few percent of level 3 at about half the time
# (sealing runs for every kept execution).
ZSTD_LEVEL = 1
# zstd levels 1-3 never use a window larger than 2 MiB; refusing frames that ask for more bounds the
# decoder's own working memory (a hostile frame could otherwise ask for up to 2 GiB).
MAX_WINDOW_SIZE = 8 * 1024 * 1024
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# A zstd block needs at least 4 input bytes and yields at most 128 KiB, so feeding the streaming
# decoder 64 bytes at a time bounds each step's output to about 2 MiB.
_STREAM_INPUT_STEP = 64

_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    compressor: zstandard.ZstdCompressor | None = getattr(_local, "compressor", None)
    if compressor is None:
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
        _local.compressor = compressor
    return compressor


def _decompressor() -> zstandard.ZstdDecompressor:
    decompressor: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_SIZE)
        _local.decompressor = decompressor
    return decompressor


def encode_payload(payload: dict[str, Any]) -> tuple[bytes, int]:
    """Serialise and compress `payload`; return ``(zstd frame, uncompressed size)``.

    The frame records its content size, so the decoder knows the exact size before producing a byte.
    Raises TypeError (orjson.JSONEncodeError) if the payload is not JSON-serialisable.
    """
    plain = orjson.dumps(payload)
    return _compressor().compress(plain), len(plain)


def _too_large(size: str, max_size: int) -> BundleError:
    return BundleError(
        "too_large",
        f"bundle payload decompresses to {size}, over the limit of {max_size} bytes; if you trust this "
        "bundle, raise the limit (open_bundle(..., max_payload_size=N))",
    )


def decode_payload(data: bytes, *, max_size: int) -> dict[str, Any]:
    """Decompress and parse a payload, refusing anything that would exceed `max_size` bytes.

    A declared content size over the limit is refused before decompressing; a frame without one is
    decoded in small steps and abandoned as soon as the output passes the limit.
    """
    return decode_sized(data, max_size=max_size)[0]


def decode_sized(data: bytes, *, max_size: int) -> tuple[dict[str, Any], int]:
    """Like `decode_payload`, also returning the uncompressed size (checked against a bundle header)."""
    if len(data) < len(_ZSTD_MAGIC) or data[: len(_ZSTD_MAGIC)] != _ZSTD_MAGIC:
        raise BundleError("malformed", "bundle payload is not a zstd frame")
    try:
        params = zstandard.get_frame_parameters(data)
    except zstandard.ZstdError as exc:
        raise BundleError("malformed", f"bundle payload has a bad zstd frame header ({exc})") from exc
    if params.window_size > MAX_WINDOW_SIZE:
        raise BundleError(
            "too_large",
            f"bundle payload's zstd frame asks for a {params.window_size}-byte decoding window; fluxrun "
            f"allows at most {MAX_WINDOW_SIZE} bytes (fluxrun's own encoder never needs more than 2 MiB)",
        )
    content_size = params.content_size
    plain: bytes | bytearray
    if content_size != zstandard.CONTENTSIZE_UNKNOWN:
        if content_size > max_size:
            raise _too_large(f"{content_size} bytes (as its zstd frame declares)", max_size)
        try:
            # Allocates exactly the declared size (checked above) and fails if the frame disagrees.
            plain = _decompressor().decompress(data, allow_extra_data=False)
        except zstandard.ZstdError as exc:
            raise BundleError("malformed", f"bundle payload does not decompress ({exc})") from exc
    else:
        plain = _decode_streaming(data, max_size=max_size)
    try:
        payload = orjson.loads(plain)
    except orjson.JSONDecodeError as exc:
        raise BundleError("malformed", f"bundle payload is not valid JSON ({exc})") from exc
    if not isinstance(payload, dict):
        raise BundleError("malformed", f"bundle payload is a JSON {type(payload).__name__}, not an object")
    return payload, len(plain)


def _decode_streaming(data: bytes, *, max_size: int) -> bytearray:
    """Decode a frame of unknown size in bounded steps, stopping as soon as it passes `max_size`."""
    decompressor = _decompressor().decompressobj()
    out = bytearray()
    view = memoryview(data)
    fed = 0
    try:
        while fed < len(data) and not decompressor.eof:
            out += decompressor.decompress(view[fed : fed + _STREAM_INPUT_STEP])
            fed = min(fed + _STREAM_INPUT_STEP, len(data))
            if len(out) > max_size:
                raise _too_large(f"more than {max_size} bytes", max_size)
    except zstandard.ZstdError as exc:
        raise BundleError("malformed", f"bundle payload does not decompress ({exc})") from exc
    if not decompressor.eof:
        raise BundleError("malformed", "bundle payload's zstd frame is incomplete")
    trailing = len(decompressor.unused_data) + len(data) - fed
    if trailing:
        raise BundleError("malformed", f"bundle payload has {trailing} bytes after its zstd frame")
    return out
