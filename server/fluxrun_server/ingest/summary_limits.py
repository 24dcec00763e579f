"""What a bundle's plaintext summary may hold, checked at ingest, before the ack.

The summary is stored whole in the index (a JSON column) and some of its fields become columns. A value the
index cannot store made the aggregator fail on every pass, for every tenant, after the bundle had been
acknowledged: `status: 2**64 - 1` (SQLite stores at most signed 64-bit integers; PostgreSQL's status column
is a 32-bit integer), NUL characters (PostgreSQL text cannot hold them). So a summary is refused, alone, with
its reason, unless:

- every integer is within signed 64 bits, and `status` is an HTTP status (100-999) or null;
- every number is finite, and `duration_ms` is a number within 0 and `MAX_DURATION_MS` or null;
- no string (key or value) holds a NUL character, and none is longer than `MAX_STRING_CHARS`;
- the whole is at most `MAX_DEPTH` deep, `MAX_NODES` values and `MAX_TEXT_CHARS` of text;
- its `bundle_id`, if present, is the header's (whose alphabet and length `ingest.verify` checks).

The signed bytes cannot be changed at the edge, so what is longer than a column is cut when it is indexed
(the aggregator's column limits); what could not be stored at all is refused here.
"""

from __future__ import annotations

import math
from typing import Any

from fluxrun.bundle import SealedBundle
from fluxrun.errors import BundleError

__all__ = ["MAX_DEPTH", "MAX_NODES", "MAX_STRING_CHARS", "MAX_TEXT_CHARS", "check_summary"]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_DEPTH = 32
MAX_NODES = 250_000  # an event index entry is ~8 values: room for ~30,000 recorded calls
MAX_STRING_CHARS = 64 * 1024
MAX_TEXT_CHARS = 4 * 1024 * 1024
MAX_DURATION_MS = 10.0**12  # ~31 years
HTTP_STATUS = range(100, 1000)


def check_summary(sealed: SealedBundle) -> None:
    """Raise BundleError("malformed", why) if the summary holds a value the index could not store."""
    summary = sealed.summary
    _walk(summary, sealed.bundle_id)
    where = f"bundle {sealed.bundle_id}: summary field"
    if "bundle_id" in summary and summary["bundle_id"] != sealed.bundle_id:
        raise BundleError("malformed", f"{where} 'bundle_id' is not the bundle id of the header")
    status = summary.get("status")
    if status is not None and (not _is_int(status) or status not in HTTP_STATUS):
        raise BundleError("malformed", f"{where} 'status' is {_show(status)}, not an HTTP status (100-999) or null")
    duration = summary.get("duration_ms")
    if duration is not None and (
        not isinstance(duration, (int, float)) or isinstance(duration, bool) or not 0 <= duration <= MAX_DURATION_MS
    ):
        raise BundleError(
            "malformed", f"{where} 'duration_ms' is {_show(duration)}, not a number from 0 to {MAX_DURATION_MS:g}"
        )


def _walk(summary: dict[str, Any], bundle_id: str) -> None:
    """One pass over every value, without recursion (a deep document cannot exhaust the stack)."""
    nodes = 0
    text = 0
    stack: list[tuple[Any, int, str]] = [(summary, 1, "summary")]
    while stack:
        value, depth, path = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            _refuse(bundle_id, f"the summary has more than {MAX_NODES} values")
        if isinstance(value, dict):
            if depth > MAX_DEPTH:
                _refuse(bundle_id, f"the summary is nested deeper than {MAX_DEPTH} levels at {path}")
            for key, item in value.items():
                text += len(key)
                _check_string(key, bundle_id, f"a key of {path}")
                stack.append((item, depth + 1, f"{path}.{key[:40]}"))
        elif isinstance(value, list):
            if depth > MAX_DEPTH:
                _refuse(bundle_id, f"the summary is nested deeper than {MAX_DEPTH} levels at {path}")
            stack.extend((item, depth + 1, f"{path}[{index}]") for index, item in enumerate(value))
        elif isinstance(value, str):
            text += len(value)
            _check_string(value, bundle_id, path)
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if not INT64_MIN <= value <= INT64_MAX:
                _refuse(bundle_id, f"{path} is {_show(value)}, outside the signed 64-bit integers the index stores")
        elif isinstance(value, float) and not math.isfinite(value):
            _refuse(bundle_id, f"{path} is {value}, not a finite number")
        if text > MAX_TEXT_CHARS:
            _refuse(bundle_id, f"the summary holds more than {MAX_TEXT_CHARS} characters of text")


def _check_string(value: str, bundle_id: str, path: str) -> None:
    if len(value) > MAX_STRING_CHARS:
        _refuse(bundle_id, f"{path} is {len(value)} characters long, over the limit of {MAX_STRING_CHARS}")
    if "\x00" in value:
        _refuse(bundle_id, f"{path} holds a NUL character, which the index cannot store")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _refuse(bundle_id: str, why: str) -> None:
    raise BundleError("malformed", f"bundle {bundle_id}: {why}")
