"""Which execution (and which task or thread within it) the current code belongs to.

One context variable holds the active `Scope`. Interceptors read it first; `None` means "not
capturing" (or "inside an intercepted call", whose inner IO belongs to that call) and they call
straight through. Tasks and threads inherit the scope by context copy; the first time one of them
records an event it gets its own child scope, so each event carries its lineage ("0.2.1").
"""

from __future__ import annotations

import asyncio
import threading
from asyncio.events import _get_running_loop
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fluxrun.model.recording import Recording
    from fluxrun.replay.session import ReplaySession

__all__ = ["Scope", "current", "scope_var"]

scope_var: ContextVar[Scope | None] = ContextVar("fluxrun_scope", default=None)
current = scope_var.get
_get_ident = threading.get_ident

_task_of: Callable[[Any], object]
try:  # the running task of a loop, without asyncio.current_task's Python frame (CPython 3.11-3.13)
    from asyncio.tasks import _current_tasks  # type: ignore[attr-defined]

    _task_of = _current_tasks.get
except ImportError:  # pragma: no cover - other interpreters and later versions
    _task_of = asyncio.current_task


def _owner() -> object:
    """The running asyncio task, or the thread's id outside a loop."""
    loop = _get_running_loop()
    return _task_of(loop) if loop is not None else _get_ident()


class Scope:
    """The capture (or replay) state of one task or thread inside one execution.

    While capturing, `recording` receives events and `session` is None. While replaying, `session`
    answers each intercepted call from the recording; interceptors check it to choose their side.
    """

    __slots__ = ("_children", "owner", "path", "recording", "session")

    def __init__(self, recording: Recording, path: str, owner: object, session: ReplaySession | None = None) -> None:
        self.recording = recording
        self.path = path
        self.owner = owner
        self.session = session
        self._children = 0

    @classmethod
    def root(cls, recording: Recording, session: ReplaySession | None = None) -> Scope:
        return cls(recording, "0", _owner(), session)

    def here(self) -> Scope:
        """The scope for the calling task or thread, creating (and entering) a child scope on first use."""
        loop = _get_running_loop()  # _owner(), inlined: this runs for every recorded event
        owner = _task_of(loop) if loop is not None else _get_ident()
        if owner is self.owner or owner == self.owner:
            return self
        self._children += 1
        child = Scope(self.recording, f"{self.path}.{self._children}", owner, self.session)
        scope_var.set(child)
        return child
