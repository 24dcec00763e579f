"""A captured execution: request or arguments, ordered IO events, and the outcome.

While the request runs, events go into `Recording.log` in call order, in the cheapest form that still
snapshots what the code saw: an `Entry` (a call recorded by the hot path, interceptors/hot_path.py) or an
`Event` (a call recorded through `Recording.add`: errors, replayed calls). Most executions succeed and are
dropped, so nothing is formatted on the request path; `Recording.events` turns the log into `Event` objects
(numbered in call order) only when a kept execution is sealed, off the request path. When the execution ends,
`Recording.close` keeps the log as it is then: a task or thread it started that outlives it (a refresher started
on first use) goes on calling, and those calls are not the execution's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from fluxrun._internal import perf_ns
from fluxrun.model.schema import EventError

__all__ = ["ENTRY_FIELDS", "KINDS", "CallEntry", "Entry", "Event", "Recording"]

# The IO channels a recording holds, in the order the summary lists them.
KINDS = ("http", "host", "env", "time", "timer", "random", "log", "db", "redis", "smtp", "unrecorded")


# A call in the log as the hot path records it (interceptors/hot_path.py), complete when it returned: a
# clock, randomness or env read, a log record. A plain tuple of these fields, in this order: the cheapest
# object CPython makes (a slotted class with its seven slots set costs about 700 instructions more per
# recorded call; README.md, "Measured"). Only hot_path.py builds one and only `Recording.events` reads one,
# by unpacking these names. `build(value)` makes the event's `data` when it is sealed; `value` is immutable
# or already a snapshot; `start_ns` is absolute (`perf_ns`).
ENTRY_FIELDS = ("kind", "call", "task", "site", "start_ns", "build", "value")
Entry = tuple[str, "str | None", str, Any, int, Callable[[Any], dict[str, Any]], Any]


class CallEntry:
    """A call whose outcome comes later (a fetch, a boundary, a statement): appended when it starts, so its
    place in the log is its start; its `value` is its data dict, completed with its duration, and its error
    if it raised, when it returns. No `__init__`: the hot path makes it with `CallEntry()` and sets its slots."""

    __slots__ = ("build", "call", "dur_ns", "error", "kind", "site", "start_ns", "task", "value")

    kind: str
    call: str | None
    task: str
    site: Any
    start_ns: int
    dur_ns: int
    build: Callable[[Any], dict[str, Any]]
    value: Any
    error: EventError | None


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
        self.error: EventError | None = None


class Recording:
    """Everything one execution did. Appends are atomic under the GIL, so tasks and threads share it."""

    __slots__ = (
        "closed_log",
        "ends",
        "entry",
        "env_seen",
        "execution",
        "log",
        "outcome",
        "request",
        "started_ns",
        "started_wall",
        "states",
        "threads",
    )

    def __init__(self, execution: str, entry: str | None, started_wall: float) -> None:
        self.execution = execution  # "asgi", "wsgi" or "function"
        self.entry = entry  # "module:attr" of the app or function, for replay
        self.request: dict[str, Any] = {}
        self.log: list[Entry | CallEntry | Event] = []  # call order; an event's seq is its position here
        self.closed_log: list[Entry | CallEntry | Event] | None = None  # the log as it was when the execution ended
        self.outcome: dict[str, Any] = {}
        self.started_ns = perf_ns()
        self.started_wall = started_wall
        self.env_seen: set[str] = set()  # env is a snapshot: the variables already recorded (interceptors/env.py)
        # lineage -> completion number of each numbered thread's and pool job's end (interceptors/threads.py)
        self.ends: dict[str, int] = {}
        # the threads it started that are running, and its root once it starts one: thread id -> lineage; and
        # completion number -> which of them were busy, and which parked in `threading`, as it was taken
        self.threads: dict[int, str] = {}
        self.states: dict[int, tuple[list[str], list[str]]] = {}

    def add(self, kind: str, call: str | None, task: str, site: Any, data: dict[str, Any]) -> Event:
        """Append an event; `site` is a `module:qualname:line` string or a `site_ref` tuple (formatted on export)."""
        event = Event(-1, kind, call, task, site, perf_ns() - self.started_ns, data)
        self.log.append(event)
        return event

    def close(self) -> None:
        """The execution has ended: its log is kept as it is, and what its leftover tasks and threads record from
        now on is dropped as it comes (`log` discards in C, so the hot path pays nothing), rather than held until
        they end (a loop that never does would grow it forever) or sealed into the bundle."""
        if self.closed_log is None:
            self.closed_log = self.log
            self.log = _DISCARDED  # type: ignore[assignment]

    @property
    def events(self) -> list[Event]:
        """The log as `Event` objects, `seq` numbering them in call order (built when read, for export)."""
        out: list[Event] = []
        started = self.started_ns
        log = self.log if self.closed_log is None else self.closed_log
        for seq, entry in enumerate(list(log)):
            if isinstance(entry, tuple):
                kind, call, task, site, start_ns, build, value = entry
                out.append(Event(seq, kind, call, task, site, start_ns - started, build(value)))
            elif isinstance(entry, Event):
                entry.seq = seq
                out.append(entry)
            else:
                data = entry.build(entry.value)
                event = Event(seq, entry.kind, entry.call, entry.task, entry.site, entry.start_ns - started, data)
                event.dur_ns = entry.dur_ns
                event.error = entry.error
                out.append(event)
        return out

    def elapsed_ns(self) -> int:
        return perf_ns() - self.started_ns


# The log of an ended execution: appends are dropped (`deque(maxlen=0)`: C, no Python call per append).
_DISCARDED: deque[Any] = deque(maxlen=0)
