"""Request state shared by the ASGI and WSGI middlewares: ids, trace context, entry point lookup."""

from __future__ import annotations

import re
import sys
from typing import Any

from fluxrun._internal import real_urandom

__all__ = ["find_entry", "parse_traceparent", "request_id"]

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_entries: dict[int, str | None] = {}


def parse_traceparent(value: str | None) -> dict[str, str] | None:
    """W3C trace context: version-traceid-parentid-flags, or None when absent or malformed."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None or match.group(2) == "0" * 32 or match.group(3) == "0" * 16:
        return None
    return {
        "version": match.group(1),
        "trace_id": match.group(2),
        "span_id": match.group(3),
        "flags": match.group(4),
    }


def request_id(incoming: str | None) -> str:
    if incoming and len(incoming) <= 200:
        return incoming
    return real_urandom(16).hex()


def find_entry(app: Any) -> str | None:
    """The `module:attr` where the app lives (uvicorn's form), so replay can import it again."""
    key = id(app)
    if key in _entries:
        return _entries[key]
    found = None
    for name, module in list(sys.modules.items()):
        if module is None or name.startswith(("fluxrun", "_", "uvicorn", "starlette", "fastapi")):
            continue
        try:
            for attr, value in vars(module).items():
                if value is app and not attr.startswith("_"):
                    found = f"{name}:{attr}"
                    break
        except Exception:
            continue
        if found:
            break
    _entries[key] = found
    return found
