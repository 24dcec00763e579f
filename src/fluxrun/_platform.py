"""Answer the standard library's one process-spawning probe before FluxRun watches for processes.

`platform.processor()` (and so `platform.platform()` and iterating `platform.uname()`) runs `uname -p` the
first time a process asks, then caches the answer. SDKs ask inside a request: openai's and anthropic's
platform headers do. Captured, that spawn made an execution "not replay-ready"; replayed in a fresh process,
it was blocked as live IO, so every replay of such an SDK call failed. Asking once up front, outside any
execution and before a replay blocks processes, leaves only the cached answer for the app to read.
"""

from __future__ import annotations

import contextlib
import platform

__all__ = ["warm_platform_probe"]


def warm_platform_probe() -> None:
    """Fill `platform`'s processor cache now (a no-op once filled; never raises)."""
    with contextlib.suppress(Exception):  # best effort: an unanswered probe only costs the old behaviour
        platform.uname().processor  # noqa: B018 - a cached_property: reading it runs and caches the probe
