"""Which execution (and which task or thread within it) the current code belongs to.

One context variable holds the active `Scope`. Interceptors read it first; `None` means "not
capturing" (or "inside an intercepted call", whose inner IO belongs to that call) and they call
straight through.

Lineage ("0", "0.1", "0.2.1") is given when a task, thread or pool job is *created*, numbered in
creation order within its parent, so it is the same at capture and at replay whatever the timing:
asyncio tasks through a task factory set on the execution's loop (`watch_loop`), threads and pool
jobs through `interceptors/threads.py` (`Scope.spawn`). A task or thread created past those seams
(a loop whose task factory the app replaced, a library's own worker thread) still gets a child scope,
the first time it records an event (`Scope.here`).

Every scope of one execution shares one completion clock: an interceptor takes the next number when a
call's outcome is known, and replay releases recorded outcomes in that order (replay/scheduler.py).
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import threading
from asyncio.events import _get_running_loop
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fluxrun.answering import Answering
    from fluxrun.model.recording import Recording

__all__ = [
    "Scope",
    "current",
    "current_owner",
    "parked",
    "running_loop",
    "scope_var",
    "task_of",
    "thread_id",
    "watch_loop",
]

scope_var: ContextVar[Scope | None] = ContextVar("fluxrun_scope", default=None)
current = scope_var.get

# Which task or thread is running: the three calls the hot path makes for every recorded call
# (interceptors/hot_path.py inlines `current_owner` with them).
running_loop = _get_running_loop
thread_id = threading.get_ident
task_of: Callable[[Any], object]
try:  # the running task of a loop, without asyncio.current_task's Python frame (CPython 3.11-3.13)
    from asyncio.tasks import _current_tasks  # type: ignore[attr-defined]

    task_of = _current_tasks.get
except ImportError:  # pragma: no cover - other interpreters and later versions
    task_of = asyncio.current_task


def current_owner() -> object:
    """The running asyncio task, or the thread's id outside a loop: what a `Scope`'s `owner` is compared with."""
    loop = _get_running_loop()
    return task_of(loop) if loop is not None else thread_id()


# Where a thread blocked in `threading` sits: Condition.wait (Event.wait, queue.get, futures' waits) and join.
_PARKED_IN = frozenset({"wait", "_wait_for_tstate_lock"})


def parked(frame: FrameType | None) -> bool:
    """A thread whose innermost frame is `frame` (from `sys._current_frames()`) is blocked in `threading`, or gone:
    waiting for another thread, as opposed to busy (running, or blocked where FluxRun cannot tell). A wait inside
    `Thread.start` (which `submit` makes when it adds a worker) is the new thread's start-up handshake: busy."""
    if frame is None:
        return True
    if frame.f_code.co_filename != threading.__file__ or frame.f_code.co_name not in _PARKED_IN:
        return False
    while frame is not None and frame.f_code.co_filename == threading.__file__:
        if frame.f_code.co_name == "start":
            return False
        frame = frame.f_back
    return True


class Scope:
    """The capture (or replay) state of one task or thread inside one execution.

    While capturing, `recording` receives events and `session` is None. While replaying, `session` (the
    replay session, seen through `fluxrun.answering`) answers each intercepted call from the recording;
    interceptors check it to choose their side.
    `clock` numbers completions for the whole execution; `owner` is None for a scope created for a
    thread or pool job that has not started running yet.
    """

    __slots__ = ("_children", "clock", "owner", "path", "recording", "session")

    def __init__(
        self,
        recording: Recording,
        path: str,
        owner: object,
        session: Answering | None = None,
        clock: Iterator[int] | None = None,
    ) -> None:
        self.recording = recording
        self.path = path
        self.owner = owner
        self.session = session
        self.clock = itertools.count(1) if clock is None else clock
        self._children = itertools.count(1)  # next() is atomic: children may be created from several threads
        if clock is None and type(owner) is not int:  # an execution's root on an event loop
            loop = _get_running_loop()  # watch_loop's check inlined: after the first request, no call
            if loop is not None and type(getattr(loop, "_task_factory", None)) is not _TaskFactory:
                watch_loop()

    @classmethod
    def root(cls, recording: Recording, session: Answering | None = None) -> Scope:
        scope = cls(recording, "0", current_owner(), session)
        if session is not None and _get_running_loop() is None:
            session.scheduler.thread_started("0")  # a synchronous root counts as a running thread (scheduler.py)
        return scope

    def spawn(self, owner: object = None) -> Scope:
        """A child scope for a task, thread or job being created now: numbered in creation order."""
        return Scope(self.recording, f"{self.path}.{next(self._children)}", owner, self.session, self.clock)

    def here(self) -> Scope:
        """The scope for the calling task or thread, creating (and entering) a child scope on first use."""
        owner = current_owner()
        if owner is self.owner or owner == self.owner:
            return self
        child = self.spawn(owner)
        scope_var.set(child)
        return child


class _TaskFactory:
    """Gives each asyncio task created inside an execution its own child scope, at creation.

    Wraps whatever factory the loop had before (None: plain `asyncio.Task`). Outside an execution it
    only costs one context-variable read. The new task runs in a copy of the context (a copy of the
    one passed in, if any, so a context the caller reuses is never changed) holding its scope.
    """

    __slots__ = ("inner",)

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        scope = scope_var.get()
        if scope is None:
            if self.inner is None:
                return asyncio.Task(coro, loop=loop, **kwargs)
            return self.inner(loop, coro, **kwargs)
        child = scope.here().spawn()
        context = kwargs.get("context")
        context = contextvars.copy_context() if context is None else context.copy()
        context.run(scope_var.set, child)
        kwargs["context"] = context
        task = asyncio.Task(coro, loop=loop, **kwargs) if self.inner is None else self.inner(loop, coro, **kwargs)
        child.owner = task
        if child.session is not None:
            child.session.scheduler.touch()
        return task


def watch_loop() -> None:
    """Number the tasks of the running loop at creation (see `_TaskFactory`); idempotent, cheap."""
    loop = _get_running_loop()
    if loop is None or type(getattr(loop, "_task_factory", None)) is _TaskFactory:  # asyncio's loops: no call
        return
    try:
        factory = loop.get_task_factory()
        if type(factory) is not _TaskFactory:
            loop.set_task_factory(_TaskFactory(factory))
    except Exception:  # pragma: no cover - a loop without task factories: lineage falls back to first IO
        return
