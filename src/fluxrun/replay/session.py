"""Serving a recording: per-channel, per-task streams of recorded calls, consumed in order.

Streams are keyed by channel, task lineage and call site (module and function, not line), so a
framework that reads the clock a different number of times cannot shift what the app's own code is
served. HTTP calls are matched by request within their task; env reads are a snapshot by key. Every
call the recording cannot answer raises `ReplayDivergence`, and is also remembered here, so a
divergence the app swallows with `except Exception` still fails the replay.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from fluxrun._internal import is_fluxrun_file, is_library_file
from fluxrun.answering import BY_TASK, SERVED_KINDS, Matcher
from fluxrun.errors import LiveIOBlocked, ReplayDivergence
from fluxrun.model.schema import AnyEvent, EnvData, EventDict
from fluxrun.replay.answers import Answers
from fluxrun.replay.scheduler import NeverAnswered, ReplayScheduler, is_pending

if TYPE_CHECKING:
    from fluxrun.answering import Answering

__all__ = ["ReplaySession", "describe_frame", "site_function"]

OUTCOME_KEYS = {"http": "response", "host": "result"}  # where a call's recorded answer is kept


def site_function(site: str) -> str:
    """`module:qualname:line` -> `module:qualname`, the part of a call site a fix rarely changes."""
    return site.rsplit(":", 1)[0]


def describe_frame(frame: FrameType | None) -> str:
    if frame is None:
        return "an unknown place"
    return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_qualname}"


def stream_key(event: AnyEvent) -> tuple[str | None, ...]:
    kind = event["kind"]
    if kind in BY_TASK:
        return (kind, event["task"])
    if kind == "db":  # database calls: matched by statement within their task (interceptors/db_common.py)
        return ("db", event["task"])
    if kind == "host":
        return ("host", event["task"], event["data"]["name"])
    return (kind, event["task"], site_function(event["site"]), event["call"])


class ReplaySession:
    """Answers one replayed execution's intercepted calls from its recording (the `fluxrun.answering` interface)."""

    def __init__(self, payload: dict[str, Any], answers: Answers | None = None) -> None:
        self.payload = payload
        self.answers = answers  # what the test supplies for calls the recording lacks
        self.events: list[AnyEvent] = payload["events"]
        self.total = sum(1 for e in self.events if e["kind"] in SERVED_KINDS)
        self.streams: dict[tuple[str | None, ...], list[AnyEvent]] = {}
        self.env: dict[str, EventDict[EnvData]] = {}
        self.env_written: set[str] = set()  # variables the replayed code set or deleted: read live from then on
        for event in self.events:
            if event["kind"] == "env":
                self.env.setdefault(event["data"]["key"] if "key" in event["data"] else event["error"]["key"], event)
            elif event["kind"] in SERVED_KINDS:
                self.streams.setdefault(stream_key(event), []).append(event)
        self.consumed: set[int] = set()
        self.served: Counter[str] = Counter()
        self.divergences: list[ReplayDivergence] = []
        self.blocked: list[LiveIOBlocked] = []
        self._lock = threading.Lock()
        # answers released in their recorded completion order, and after the ends of jobs that ended before them
        self.scheduler = ReplayScheduler(self.events, payload.get("task_ends"), payload.get("task_states"))

    # -- answering ---------------------------------------------------------------------------------
    def take(
        self,
        kind: str,
        call: str,
        task: str,
        frame: FrameType | None,
        site: str,
        *,
        name: str | None = None,
        match: Matcher | None = None,
    ) -> AnyEvent:
        """The recorded event that answers this call; raises `ReplayDivergence` when there is none.

        Fetches and boundaries then wait for the answer's turn: `turn` / `wait_turn` (replay/scheduler.py)."""
        self.scheduler.touch()
        if kind in BY_TASK:
            key: tuple[str, ...] = (kind, task)
        elif kind == "db":
            key = ("db", task)
        elif kind == "host":
            key = ("host", task, name or call)
        else:
            key = (kind, task, site_function(site), call)
        with self._lock:
            stream = self.streams.get(key, [])
            for index, event in enumerate(stream):
                if match is None or match(event) is None:
                    del stream[index]
                    self.consumed.add(event["seq"])
                    self.served[kind] += 1
                    if self.answers is not None and kind in OUTCOME_KEYS and is_pending(event, OUTCOME_KEYS[kind]):
                        # recorded in flight, so with no answer: a test may supply the one a fix waits for
                        supplied = self.answers.answer(kind, call, name, match, task)
                        if supplied is not None:
                            return supplied
                    return event
            supplied = self.answers.answer(kind, call, name, match, task) if self.answers is not None else None
        if supplied is not None:
            return supplied
        raise self.diverge(kind, call, task, frame, stream, match)

    def take_if_recorded(self, kind: str, call: str, task: str, site: str) -> AnyEvent | None:
        """An installed package's clock, randomness or sleep: its next recorded event, or None when its stream
        has nothing left (a framework may read the clock more often at replay; that is no divergence)."""
        with self._lock:
            stream = self.streams.get((kind, task, site_function(site), call))
            if not stream:
                return None
            event = stream.pop(0)
            self.consumed.add(event["seq"])
            self.served[kind] += 1
            return event

    def upcoming(self, kind: str, task: str) -> Sequence[AnyEvent]:
        """The calls of a per-task kind (db, http...) still to be served in `task`, in order (not consumed)."""
        return self.streams.get((kind, task), ())

    async def turn(self, event: AnyEvent, outcome_key: str) -> None:
        """Await the recorded turn of a taken fetch or boundary answer (asyncio callers)."""
        try:
            await self.scheduler.turn(event, is_pending(event, outcome_key), str(event.get("call") or event["kind"]))
        except NeverAnswered as exc:
            with self._lock:
                self.divergences.append(exc)  # the replay fails even if the app swallows the exception
            raise

    def wait_turn(self, event: AnyEvent, outcome_key: str) -> None:
        """Block until the recorded turn of a taken answer (thread callers)."""
        self.scheduler.wait_turn(event, is_pending(event, outcome_key), str(event.get("call") or event["kind"]))

    def close(self) -> None:
        """The replayed execution ended: a thread still waiting for a call that never completed gives up."""
        self.scheduler.close()

    def env_read(
        self, key: str, task: str, frame: FrameType | None, *, lenient: bool = False
    ) -> EventDict[EnvData] | None:
        """Env is a snapshot: every read of a recorded variable is answered, however often it is read.

        A variable the recording lacks was not read at capture at all; `lenient` (a library's own read of a
        setting it caches per process, OTEL_PYTHON_TRACER_PROVIDER): None, answered live by the caller."""
        with self._lock:
            event = self.env.get(key)
            if event is not None:
                recorded = {event["seq"]} | {
                    other["seq"]
                    for other in self.events
                    if other["kind"] == "env" and (other["data"].get("key") or other.get("error", {}).get("key")) == key
                }
                # served counts recorded calls, not the reads of the snapshot (a key read 40 times is one)
                self.served["env"] += len(recorded - self.consumed)
                self.consumed |= recorded
                return event
            supplied = self.answers.env_event(key, task) if self.answers is not None else None
        if supplied is not None:
            return supplied
        if lenient:
            return None
        hint = (
            f"  {key} was not read when this execution was captured: the recording holds every variable read "
            "then, so the code now reads the environment on another path; if that is the fix, supply the value "
            f"with fluxrun.replay.Answers().env({key!r}, ...)"
        )
        raise self.diverge("env", f"env {key}", task, frame, [], None, hint=hint)

    # -- when it cannot answer ---------------------------------------------------------------------
    def diverge(
        self,
        kind: str,
        call: str,
        task: str,
        frame: FrameType | None,
        stream: list[AnyEvent],
        match: Matcher | None,
        *,
        hint: str | None = None,
    ) -> ReplayDivergence:
        lines = [f"{call} has no recorded answer", f"  made at {describe_frame(frame)} (task {task})"]
        if hint:
            lines.append(hint)
        nearest = stream[0] if stream else self._nearest(kind, call)
        if nearest is None:
            recorded = [str(e["call"]) for e in self.events if e["kind"] == kind]
            lines.append(
                f"  the recording has no {kind} calls"
                if not recorded
                else f"  recorded {kind} calls: {', '.join(recorded[:5])}"
            )
        else:
            where = "next recorded" if stream else "nearest recorded"
            lines.append(f"  {where} {kind} call: {nearest['call']} (task {nearest['task']}, at {nearest['site']})")
            if match is not None:
                why = match(nearest)
                if why:
                    lines.extend("    " + line for line in why.splitlines())
        lines.append(self.progress())
        error = ReplayDivergence("\n".join(lines), call=call, site=describe_frame(frame), kind=kind)
        with self._lock:
            self.divergences.append(error)
        return error

    def refuse(self, kind: str, call: str, task: str, frame: FrameType | None, reason: str) -> ReplayDivergence:
        """A recorded call matched but cannot be served faithfully (a truncated body, say)."""
        message = (
            f"{call} cannot be answered: {reason}\n  made at {describe_frame(frame)} (task {task})\n{self.progress()}"
        )
        error = ReplayDivergence(message, call=call, site=describe_frame(frame), kind=kind)
        with self._lock:
            self.divergences.append(error)
        return error

    def _nearest(self, kind: str, call: str) -> AnyEvent | None:
        candidates = [e for e in self.events if e["kind"] == kind and e["seq"] not in self.consumed]
        if not candidates:
            return None
        import difflib

        names = [str(e["call"]) for e in candidates]
        close = difflib.get_close_matches(call, names, n=1, cutoff=0.0)
        return candidates[names.index(close[0])] if close else candidates[0]

    def progress(self) -> str:
        served = ", ".join(f"{n} {k}" for k, n in sorted(self.served.items())) or "nothing yet"
        return f"  replay got through {len(self.consumed)} of {self.total} recorded calls (served: {served})"

    def unconsumed(self) -> list[AnyEvent]:
        """Recorded calls replay never made. An installed package's or the standard library's own clock,
        randomness, sleep or env read is not counted: a client or framework may read its clock less often
        in a test than in a server, and walks whatever environment the process has. Nor is a call that was
        still in flight when the execution ended: it never delivered anything to the app, and a replay that
        ends as soon as the app's outcome is known need not have started it."""
        return [
            e
            for e in self.events
            if e["kind"] in SERVED_KINDS
            and e["seq"] not in self.consumed
            and not _package_read(e)
            and not _pending_at_end(e)
        ]


# The calls the replay scheduler releases in completion order, and where each records its outcome.
_OUTCOME_KEYS = {"http": "response", "host": "result"}


def _pending_at_end(event: AnyEvent) -> bool:
    """A fetch or boundary call recorded with no outcome (see `scheduler.is_pending`)."""
    outcome_key = _OUTCOME_KEYS.get(event["kind"])
    return outcome_key is not None and is_pending(event, outcome_key)


def _package_read(event: AnyEvent) -> bool:
    if event["kind"] not in ("time", "random", "timer", "env"):
        return False
    module = sys.modules.get(str(event.get("site", "")).split(":", 1)[0])
    filename = getattr(module, "__file__", None)
    return bool(filename) and is_library_file(str(filename)) and not is_fluxrun_file(str(filename))


if TYPE_CHECKING:  # mypy fails here when the session stops implementing what the interceptors call
    _implements: type[Answering] = ReplaySession
