"""Serving a recording: per-channel, per-task streams of recorded calls, consumed in order.

Streams are keyed by channel, task lineage and call site (module and function, not line), so a
framework that reads the clock a different number of times cannot shift what the app's own code is
served. HTTP calls are matched by request within their task; env reads are a snapshot by key. Every
call the recording cannot answer raises `ReplayDivergence`, and is also remembered here, so a
divergence the app swallows with `except Exception` still fails the replay.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from types import FrameType
from typing import Any

from fluxrun.errors import LiveIOBlocked, ReplayDivergence

__all__ = ["Matcher", "ReplaySession", "describe_frame", "site_function"]

# A matcher compares a recorded event with the call being made: None when they agree, else why not.
Matcher = Callable[[dict[str, Any]], str | None]

SERVED_KINDS = ("http", "host", "env", "time", "timer", "random")


def site_function(site: str) -> str:
    """`module:qualname:line` -> `module:qualname`, the part of a call site a fix rarely changes."""
    return site.rsplit(":", 1)[0]


def describe_frame(frame: FrameType | None) -> str:
    if frame is None:
        return "an unknown place"
    return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_qualname}"


def stream_key(event: dict[str, Any]) -> tuple[str, ...]:
    kind = event["kind"]
    if kind == "http":
        return ("http", event["task"])
    if kind == "host":
        return ("host", event["task"], event["data"]["name"])
    return (kind, event["task"], site_function(event["site"]), event["call"])


class ReplaySession:
    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = payload
        self.events: list[dict[str, Any]] = payload["events"]
        self.total = sum(1 for e in self.events if e["kind"] in SERVED_KINDS)
        self.streams: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        self.env: dict[str, dict[str, Any]] = {}
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
    ) -> dict[str, Any]:
        """The recorded event that answers this call; raises `ReplayDivergence` when there is none."""
        if kind == "http":
            key: tuple[str, ...] = ("http", task)
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
                    return event
        raise self.diverge(kind, call, task, frame, stream, match)

    def env_read(self, key: str, task: str, frame: FrameType | None) -> dict[str, Any]:
        """Env is a snapshot: every read of a recorded variable is answered, however often it is read."""
        with self._lock:
            event = self.env.get(key)
            if event is not None:
                self.consumed.add(event["seq"])
                for other in self.events:
                    if (
                        other["kind"] == "env"
                        and (other["data"].get("key") or other.get("error", {}).get("key")) == key
                    ):
                        self.consumed.add(other["seq"])
                self.served["env"] += 1
                return event
        raise self.diverge("env", f"env {key}", task, frame, [], None)

    # -- when it cannot answer ---------------------------------------------------------------------
    def diverge(
        self,
        kind: str,
        call: str,
        task: str,
        frame: FrameType | None,
        stream: list[dict[str, Any]],
        match: Matcher | None,
    ) -> ReplayDivergence:
        lines = [f"{call} has no recorded answer", f"  made at {describe_frame(frame)} (task {task})"]
        nearest = stream[0] if stream else self._nearest(kind, call)
        if nearest is None:
            recorded = [k for k in (e["call"] for e in self.events if e["kind"] == kind)]
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

    def _nearest(self, kind: str, call: str) -> dict[str, Any] | None:
        candidates = [e for e in self.events if e["kind"] == kind and e["seq"] not in self.consumed]
        if not candidates:
            return None
        import difflib

        names = [e["call"] for e in candidates]
        close = difflib.get_close_matches(call, names, n=1, cutoff=0.0)
        return candidates[names.index(close[0])] if close else candidates[0]

    def progress(self) -> str:
        served = ", ".join(f"{n} {k}" for k, n in sorted(self.served.items())) or "nothing yet"
        return f"  replay got through {len(self.consumed)} of {self.total} recorded calls (served: {served})"

    def unconsumed(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] in SERVED_KINDS and e["seq"] not in self.consumed]
