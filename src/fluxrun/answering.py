"""What the interceptors ask of a replay: the recorded answer to a call, or why there is none.

At replay `Scope.session` holds an `Answering`; an interceptor records when it is None and asks it when it
is not. The interceptors import this module, never `fluxrun.replay`: the replay session and its scheduler
implement these protocols (checked by mypy in replay/session.py), so either side can change without the
other, as vcrpy's stubs know nothing of how a cassette answers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import FrameType
from typing import Protocol, runtime_checkable

from fluxrun.errors import ReplayDivergence
from fluxrun.model.schema import AnyEvent, EnvData, EventDict

__all__ = ["BY_TASK", "SERVED_KINDS", "Answering", "Matcher", "Pacing", "serve_kind"]

# A matcher compares a recorded event with the call being made: None when they agree, else why not.
Matcher = Callable[[AnyEvent], str | None]

# The kinds replay answers from the recording (the others, logs say, are recorded for reading only).
SERVED_KINDS = {"http", "host", "env", "time", "timer", "random", "db", "redis", "smtp"}
# Kinds matched by what the call is (a matcher), in order within their task, wherever in the task it is made.
BY_TASK = {"http", "redis", "smtp"}


def serve_kind(kind: str) -> None:
    """Serve an interceptor's own kind at replay (a plugin's, see `fluxrun.interceptors.api`), matched per task."""
    if kind not in SERVED_KINDS:
        SERVED_KINDS.add(kind)
        BY_TASK.add(kind)


class Pacing(Protocol):
    """What the interceptors tell the replay scheduler, so it can tell a stalled replay from a busy one."""

    def touch(self) -> None:
        """Something happened (a call, a new task, thread or job)."""

    def thread_started(self, path: str | None = None) -> None: ...

    def thread_finished(self, ident: int | None = None) -> None: ...


@runtime_checkable
class Answering(Protocol):
    """A replay answering intercepted calls from a recording (`fluxrun.replay.session.ReplaySession`)."""

    @property
    def scheduler(self) -> Pacing: ...

    @property
    def env_written(self) -> set[str]:
        """Variables the replayed code set or deleted: read live from then on (interceptors/env.py adds them)."""

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
        """The recorded event answering this call; raises `ReplayDivergence` when there is none."""

    def take_if_recorded(self, kind: str, call: str, task: str, site: str) -> AnyEvent | None:
        """A package's clock, randomness or sleep: its next recorded event, or None when none is left."""

    def upcoming(self, kind: str, task: str) -> Sequence[AnyEvent]:
        """The calls of a per-task kind still to be served in `task`, in order (not consumed)."""

    async def turn(self, event: AnyEvent, outcome_key: str) -> None:
        """Await the recorded turn of a taken answer (asyncio callers)."""

    def wait_turn(self, event: AnyEvent, outcome_key: str) -> None:
        """Block until the recorded turn of a taken answer (thread callers)."""

    def env_read(
        self, key: str, task: str, frame: FrameType | None, *, lenient: bool = False
    ) -> EventDict[EnvData] | None:
        """The recorded read of `key` (env is a snapshot); None when `lenient` and it was never read."""

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
        """The error for a call the recording cannot answer, remembered so the replay fails even if swallowed."""

    def refuse(self, kind: str, call: str, task: str, frame: FrameType | None, reason: str) -> ReplayDivergence:
        """The error for a recorded call that matched but cannot be served faithfully."""
