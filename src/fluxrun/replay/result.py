"""What a replay found: reproduced, fixed or changed, the two outcomes side by side, and what was served."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from fluxrun.model.schema import AnyEvent

__all__ = ["Outcome", "ReplayResult", "classify", "outcome_of"]

Verdict = Literal["reproduced", "fixed", "changed"]


@dataclass(frozen=True)
class Outcome:
    """How one run of the code ended: an exception, an HTTP status, or a return."""

    kind: str  # "error", "http_5xx" or "ok"
    status: int | None = None
    error_type: str | None = None
    message: str | None = None
    fingerprint: str | None = None
    where: str | None = None  # file:line of the innermost app frame

    def describe(self) -> str:
        if self.kind == "error":
            status = f" (HTTP {self.status})" if self.status else ""
            return f"{self.error_type}: {self.message}{status}" + (
                f"\n      raised at {self.where}" if self.where else ""
            )
        if self.kind == "http_5xx":
            return f"HTTP {self.status} answer"
        return f"ok{f' (HTTP {self.status})' if self.status else ''}"


def outcome_of(recorded: dict[str, Any]) -> Outcome:
    error = recorded.get("error")
    if error:
        frames = [f for f in error.get("frames", []) if f.get("in_app")] or error.get("frames", [])
        where = f"{frames[-1]['file']}:{frames[-1]['line']} in {frames[-1]['function']}" if frames else None
        return Outcome(
            "error", recorded.get("status"), error["type"], error.get("message"), error.get("fingerprint"), where
        )
    status = recorded.get("status")
    if isinstance(status, int) and status >= 500:
        return Outcome("http_5xx", status)
    return Outcome("ok", status)


def classify(original: Outcome, new: Outcome) -> Verdict:
    """reproduced: the same failure; fixed: no error and no 5xx; changed: a different failure."""
    if new.kind == "ok":
        return "fixed"
    if new.kind == "error" and original.kind == "error":
        same = new.error_type == original.error_type and new.fingerprint == original.fingerprint
        return "reproduced" if same else "changed"
    if new.kind == "http_5xx" and original.kind == "http_5xx":
        return "reproduced" if new.status == original.status else "changed"
    return "changed"


@dataclass
class ReplayResult:
    bundle_id: str
    entry: str | None
    outcome: Verdict
    original: Outcome
    new: Outcome
    served: dict[str, int]
    recorded_calls: int
    unconsumed: list[AnyEvent]
    events: list[tuple[str, str, str, str]]  # (kind, call, task, site) in the order replay served them
    response: dict[str, Any] | None = None
    value: Any = None
    warnings: list[str] = field(default_factory=list)
    isolation: str = "off"  # which protection held while the code ran (see fluxrun.replay.isolation)
    supplied: list[str] = field(default_factory=list)  # calls answered by the test's `Answers`, not the recording

    @property
    def served_total(self) -> int:
        return sum(self.served.values())

    def summary(self) -> str:
        served = ", ".join(f"{n} {k}" for k, n in sorted(self.served.items())) or "none"
        lines = [
            f"replay of {self.bundle_id} ({self.entry}): {self.outcome.upper()}",
            f"  recorded: {self.original.describe()}",
            f"  now:      {self.new.describe()}",
            f"  served {self.served_total} of {self.recorded_calls} recorded calls ({served})",
            f"  isolation: {self.isolation}",
        ]
        if self.supplied:
            lines.append(f"  answered by the test, not the recording: {', '.join(self.supplied)}")
        if self.unconsumed:
            lines.append(f"  {len(self.unconsumed)} recorded calls were never made at replay:")
            lines.extend(
                f"    #{e['seq']} {_named(e)} (task {e['task']}, at {e['site']})" for e in self.unconsumed[:10]
            )
            if len(self.unconsumed) > 10:
                lines.append(f"    … {len(self.unconsumed) - 10} more")
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)

    def served_counts(self) -> Counter[str]:
        return Counter(self.served)


def _named(event: AnyEvent) -> str:
    """A recorded call as a list shows it: `redis GET`, `db sqlite3 commit` (its kind, unless its name has it)."""
    kind, call = str(event.get("kind")), str(event.get("call"))
    return call if call.startswith(f"{kind} ") else f"{kind} {call}"
