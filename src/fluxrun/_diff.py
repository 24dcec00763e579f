"""Short, readable differences for divergence messages."""

from __future__ import annotations

import difflib

__all__ = ["short_diff"]

_MAX_LINES = 12


def short_diff(recorded: str, actual: str, *, width: int = 100) -> str:
    """`- recorded` / `+ actual` lines; long single-line values are cut around the first difference."""
    if "\n" not in recorded and "\n" not in actual:
        start = next((i for i, (a, b) in enumerate(zip(recorded, actual, strict=False)) if a != b), None)
        if start is None:
            start = min(len(recorded), len(actual))
        left = max(0, start - width // 3)

        def cut(text: str) -> str:
            return ("…" if left else "") + text[left : left + width] + ("…" if len(text) > left + width else "")

        return f"  - {cut(recorded)}\n  + {cut(actual)}"
    lines = list(
        difflib.unified_diff(recorded.splitlines(), actual.splitlines(), "recorded", "actual", lineterm="", n=1)
    )
    if len(lines) > _MAX_LINES:
        lines = [*lines[:_MAX_LINES], f"  … {len(lines) - _MAX_LINES} more lines"]
    return "\n".join("  " + line for line in lines)
