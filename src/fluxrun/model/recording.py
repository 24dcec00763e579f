"""A captured execution: request or arguments, ordered IO events, and the outcome.

While the request runs, events go into `Recording.log` in call order, in the cheapest form that
still snapshots what the code saw: a plain tuple for a call that returns an immutable value (clock
reads, randomness, env reads, log records) and a slotted `Event` for a call whose end is recorded
later (a fetch, a declared boundary). Most executions succeed and are dropped, so nothing is
formatted on the request path; `Recording.events` turns the log into `Event` objects (numbered in
call order) only when a kept execution is sealed, off the request path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fluxrun._internal import perf_ns

__all__ = ["KINDS", "Event", "Recording", "ValueEntry"]

# The IO channels a recording holds, in the order the summary lists them.
KINDS = ("http", "host", "env", "time", "timer", "random", "log")

# A call in the log: (kind, call, task, site, start perf_ns (absolute), dur_ns, build, value, error), a
# tuple, or a list while the call runs. `build(value)` makes the event's `data` dict when the execution
# is sealed; `value` is immutable (or already a snapshot); `error` is the error fields or None.
ValueEntry = tuple[str, str | None, str, Any, int, int, Callable[[Any], dict[str, Any]], Any, dict[str, Any] | None]


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

    __slots__ = ("entry", "execution", "log", "outcome", "request", "started_ns", "started_wall")

    def __init__(self, execution: str, entry: str | None, started_wall: float) -> None:
        self.execution = execution  # "asgi", "wsgi" or "function"
        self.entry = entry  # "module:attr" of the app or function, for replay
        self.request: dict[str, Any] = {}
        self.log: list[Event | ValueEntry] = []  # call order; an event's seq is its position here
        self.outcome: dict[str, Any] = {}
        self.started_ns = perf_ns()
        self.started_wall = started_wall

    def add(self, kind: str, call: str | None, task: str, site: Any, data: dict[str, Any]) -> Event:
        """Append an event; `site` is a `module:qualname:line` string or a `site_ref` tuple (formatted on export)."""
        event = Event(-1, kind, call, task, site, perf_ns() - self.started_ns, data)
        self.log.append(event)
        return event

    @property
    def events(self) -> list[Event]:
        """The log as `Event` objects, `seq` numbering them in call order (built when read, for export)."""
        out: list[Event] = []
        started = self.started_ns
        for seq, entry in enumerate(list(self.log)):
            if isinstance(entry, Event):
                entry.seq = seq
                out.append(entry)
                continue
            kind, call, task, site, start, dur, build, value, error = entry
            event = Event(seq, kind, call, task, site, start - started, build(value))
            event.dur_ns = dur
            event.error = error
            out.append(event)
        return out

    def elapsed_ns(self) -> int:
        return perf_ns() - self.started_ns
