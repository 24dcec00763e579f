"""Readable replay failures in pytest's own output: outcome, error and where, and the IO timelines."""

from __future__ import annotations

from typing import Any

from fluxrun.errors import LiveIOBlocked, ReplayDivergence
from fluxrun.replay import ReplayExpectationError, ReplayResult

__all__ = ["render_failure", "timeline"]

_MAX_ROWS = 30
_NOT_SERVED = frozenset({"log"})  # recorded for people to read; replay lets the app log as it runs


def timeline(recorded: list[dict[str, Any]], actual: list[tuple[str, str, str, str]]) -> str:
    """Recorded calls beside the calls made at replay, in order, the first difference marked.

    Both columns hold the same kinds of calls: the IO replay serves. Log lines are the app's output, not
    calls answered from the recording, so neither side lists them (one side listing them would mark a
    difference at the first log line even when replay made every recorded call)."""
    rows = [
        f"    {'recorded':<58} | {'replay':<58}",
    ]
    left = [
        f"{e['kind']:<6} {e['call']}" + (f" [task {e['task']}]" if e["task"] != "0" else "")
        for e in recorded
        if e["kind"] not in _NOT_SERVED
    ]
    right = [
        f"{kind:<6} {call}" + (f" [task {task}]" if task != "0" else "")
        for kind, call, task, _ in actual
        if kind not in _NOT_SERVED
    ]
    marked = False
    for index in range(min(max(len(left), len(right)), _MAX_ROWS)):
        a = left[index] if index < len(left) else ""
        b = right[index] if index < len(right) else "(no call)" if index < len(left) else ""
        marker = "  "
        if a != b and not marked:
            marker, marked = "->", True
        rows.append(f"  {marker}{_fit(a):<58} | {_fit(b):<58}")
    if max(len(left), len(right)) > _MAX_ROWS:
        rows.append(f"    … {max(len(left), len(right)) - _MAX_ROWS} more")
    return "\n".join(rows)


def _fit(text: str, width: int = 58) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def render_failure(exc: BaseException, bundle: str, recorded: list[dict[str, Any]] | None = None) -> str:
    """The text pytest shows for a failed replay, without a traceback into FluxRun."""
    head = f"FluxRun replay of {bundle}"
    if isinstance(exc, ReplayExpectationError):
        result: ReplayResult = exc.result
        body = str(exc)
        if recorded is not None:
            body += "\n  IO timeline:\n" + timeline(recorded, result.events)
        return f"{head}\n{body}"
    if isinstance(exc, ReplayDivergence):
        text = f"{head}: the code made a call the recording cannot answer (ReplayDivergence)\n{exc}"
        actual = getattr(exc, "actual", None)
        if recorded is not None and actual is not None:
            text += "\n  IO timeline:\n" + timeline(recorded, actual)
        return text
    if isinstance(exc, LiveIOBlocked):
        return f"{head}: the code tried to reach the live world (LiveIOBlocked)\n  {exc}"
    return f"{head}: {type(exc).__name__}: {exc}"
