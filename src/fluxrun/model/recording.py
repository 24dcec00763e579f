"""A captured execution: request or arguments, ordered IO events, and the outcome.

Events are kept as slotted objects while the request runs (cheap to append, safe to share
between tasks); they become the versioned payload dict only when a kept execution is sealed,
off the request path.
"""

from __future__ import annotations

import itertools
from typing import Any

from fluxrun._internal import perf_ns

__all__ = ["KINDS", "Event", "Recording"]

# The IO channels a recording holds, in the order the summary lists them.
KINDS = ("http", "host", "env", "time", "timer", "random", "log")


class Event:
    """One intercepted call. `data` holds kind-specific fields; values are snapshots, never live objects."""

    __slots__ = ("call", "data", "dur_ns", "error", "kind", "seq", "site", "start_ns", "task")

    def __init__(
        self, seq: int, kind: str, call: str | None, task: str, site: Any, start_ns: int, data: dict[str, Any]
    ) -> None:
        self.seq = seq
        self.kind = kind
        self.call = call
        self.task = task
        self.site = site
        self.start_ns = start_ns
        self.dur_ns = 0
        self.data = data
        self.error: dict[str, Any] | None = None


class Recording:
    """Everything one execution did. Appends are atomic under the GIL, so tasks and threads share it."""

    __slots__ = ("_seq", "entry", "events", "execution", "outcome", "request", "started_ns", "started_wall")

    def __init__(self, execution: str, entry: str | None, started_wall: float) -> None:
        self.execution = execution  # "asgi", "wsgi" or "function"
        self.entry = entry  # "module:attr" of the app or function, for replay
        self.request: dict[str, Any] = {}
        self.events: list[Event] = []
        self.outcome: dict[str, Any] = {}
        self.started_ns = perf_ns()
        self.started_wall = started_wall
        self._seq = itertools.count()

    def add(self, kind: str, call: str | None, task: str, site: Any, data: dict[str, Any]) -> Event:
        """Append an event; `site` is a `module:qualname:line` string or a `site_ref` tuple (formatted on export)."""
        event = Event(next(self._seq), kind, call, task, site, perf_ns() - self.started_ns, data)
        self.events.append(event)
        return event

    def elapsed_ns(self) -> int:
        return perf_ns() - self.started_ns
