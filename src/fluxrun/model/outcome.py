"""How an execution ended: its return value, HTTP status, or exception with frames and a fingerprint.

The fingerprint groups failures the way a triager would: the exception type plus the app's own
frames (module and function, not line numbers, so an unrelated edit above does not split a group).
"""

from __future__ import annotations

import hashlib
import linecache
import traceback
from types import TracebackType
from typing import Any

from fluxrun._internal import InApp
from fluxrun.model.values import encode, type_path

__all__ = ["describe_exception", "fingerprint"]

_MAX_FRAMES = 60
_MAX_CHAIN = 5


def _frames(tb: TracebackType | None, in_app: InApp) -> list[dict[str, Any]]:
    frames = []
    for frame, lineno in traceback.walk_tb(tb):
        code = frame.f_code
        module = frame.f_globals.get("__name__", "?")
        frames.append(
            {
                "file": code.co_filename,
                "line": lineno,
                "function": code.co_qualname,
                "module": module,
                "in_app": in_app.module(module, code.co_filename),
                "code": linecache.getline(code.co_filename, lineno).strip(),
            }
        )
    if len(frames) > _MAX_FRAMES:  # keep both ends: where it started and where it was raised
        half = _MAX_FRAMES // 2
        frames = [*frames[:half], *frames[-half:]]
    return frames


def fingerprint(exc_type: str, frames: list[dict[str, Any]]) -> str:
    chosen = [f for f in frames if f["in_app"]] or frames
    parts = [exc_type, *(f"{f['module']}:{f['function']}" for f in chosen)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def describe_exception(exc: BaseException, in_app: InApp, *, max_bytes: int) -> dict[str, Any]:
    """The recorded form of an exception: type, message, frames, fingerprint and its cause chain."""
    exc_type = type_path(type(exc))
    frames = _frames(exc.__traceback__, in_app)
    chain: list[dict[str, str]] = []
    seen = {id(exc)}
    inner = exc.__cause__ or exc.__context__
    while inner is not None and id(inner) not in seen and len(chain) < _MAX_CHAIN:
        seen.add(id(inner))
        chain.append({"type": type_path(type(inner)), "message": _message(inner)})
        inner = inner.__cause__ or inner.__context__
    return {
        "type": exc_type,
        "message": _message(exc),
        "frames": frames,
        "fingerprint": fingerprint(exc_type, frames),
        "chain": chain,
        "exception": encode(exc, max_bytes=max_bytes),
    }


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"
