"""Request identity worked out off the request path: request id and W3C trace context from headers."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["parse_traceparent", "request_identity"]

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def parse_traceparent(value: str | None) -> dict[str, str] | None:
    """W3C trace context: version-traceid-parentid-flags, or None when absent or malformed."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None or match.group(2) == "0" * 32 or match.group(3) == "0" * 16:
        return None
    return {"version": match.group(1), "trace_id": match.group(2), "span_id": match.group(3), "flags": match.group(4)}


def request_identity(headers: list[list[str]], bundle_id: str) -> tuple[str, dict[str, str] | None]:
    """The request's own id (X-Request-ID) or the bundle id, and its parsed traceparent."""
    found: dict[str, Any] = {}
    for name, value in headers:
        lowered = name.lower()
        if lowered in ("x-request-id", "traceparent") and lowered not in found:
            found[lowered] = value
    incoming = found.get("x-request-id")
    rid = incoming if incoming and len(incoming) <= 200 else bundle_id
    return rid, parse_traceparent(found.get("traceparent"))
