"""Carry the capture into threads the execution starts (`threading.Thread`, thread pools), and nothing else.

asyncio tasks, `asyncio.to_thread` and Starlette's thread pool copy the context already; plain threads
and `ThreadPoolExecutor` workers start without the caller's context, so their IO would be lost. Only
FluxRun's own scope crosses: the app's context variables stay where they were, as without FluxRun.
Copying the whole context used to carry sniffio's "asyncio is running here" into a new thread, and anyio
then refused to start a loop there ("Already running asyncio in this thread": blocking portals,
Starlette's TestClient inside a captured function).

A pool worker runs many jobs in one context, so the scope is set for each job and reset after it, and the
worker thread itself (started by the first `submit`, maybe inside an execution) gets none: the next job,
from another execution or from none, never inherits it.

Lineage is given at creation: each thread the app's code starts and each pool job gets a child scope when
`start` or `submit` is called, numbered in creation order within its parent, so a job that does CPU work
before its first call has the same lineage at capture and at replay. Threads a library starts for itself
(anyio's workers, pools' own threads) are not numbered: whether one is started depends on timing.
At capture each one's end takes the next number of the execution's completion clock, as an answer does
(`Recording.ends`), and while it runs it is listed in `Recording.threads` (with a synchronous root that started
it), so that each answer notes which of them were busy when it came (hot_path.end_call); at replay each tells the
scheduler while it runs, so an answer that came after a job had ended waits for that job to end, and one that came
while a thread was parked waits for it to park (see replay/scheduler.py).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import thread as _pool_thread
from typing import Any

from fluxrun._context import Scope, current, current_owner, scope_var
from fluxrun._internal import frame_is_library
from fluxrun.interceptors.base import Patch, wrap_method

__all__ = ["ThreadsInterceptor"]


def _in_scope(scope: Scope, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run `function` in the thread's own context with only FluxRun's scope set, and unset it afterwards."""
    token = scope_var.set(scope)
    try:
        return function(*args, **kwargs)
    finally:
        scope_var.reset(token)


def _in_child(scope: Scope, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`_in_scope` for a thread or job numbered at creation: it owns its scope from the moment it runs."""
    scope.owner = current_owner()
    scheduler = scope.session.scheduler if scope.session is not None else None
    if scheduler is not None:
        scheduler.thread_started(scope.path)
    else:
        scope.recording.threads[threading.get_ident()] = scope.path
    token = scope_var.set(scope)
    try:
        return function(*args, **kwargs)
    finally:
        scope_var.reset(token)
        if scheduler is not None:
            scheduler.thread_finished()
        else:
            scope.recording.threads.pop(threading.get_ident(), None)
            _record_end(scope)


def _record_end(scope: Scope, _future: Any = None) -> None:
    """At capture: a numbered thread's or job's end takes the next completion number, unless its execution had
    ended first (then it never ends at replay either)."""
    recording = scope.recording
    if "kind" not in recording.outcome:
        recording.ends[scope.path] = next(scope.clock)


def _in_job(scope: Scope, ran: list[int], function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`_in_child` for a pool job: at replay the scheduler hears that it finished from its future's done
    callback (`_job_done`), once the result is set, not when the function returns: a thread waiting on the
    futures must see this job complete before the next answer lets another one complete."""
    scope.owner = current_owner()
    ident = threading.get_ident()
    if scope.session is not None:
        ran.append(ident)
        scope.session.scheduler.thread_started(scope.path)
    else:
        scope.recording.threads[ident] = scope.path
    token = scope_var.set(scope)
    try:
        return function(*args, **kwargs)
    finally:
        scope_var.reset(token)
        if scope.session is None:
            scope.recording.threads.pop(ident, None)


def _job_done(scope: Scope, ran: list[int]) -> Callable[[Any], None]:
    def done(_future: Any) -> None:
        if ran and scope.session is not None:
            scope.session.scheduler.thread_finished(ran[0])

    return done


def _spawn(scope: Scope) -> Scope:
    parent = scope.here()
    child = parent.spawn()
    if child.session is not None:
        child.session.scheduler.touch()
    elif parent.path == "0" and type(parent.owner) is int:  # a synchronous root, known once it starts a thread
        parent.recording.threads[parent.owner] = "0"
    return child


def _enter_copied_context(function: Any, child: Scope) -> None:
    """`asyncio.to_thread` submits `partial(context.run, func)`: that context replaces the worker's, so the
    job's scope is set in it too (a fresh copy made for this one call)."""
    target = function.func if isinstance(function, functools.partial) else function
    context = getattr(target, "__self__", None)
    if isinstance(context, contextvars.Context):
        with contextlib.suppress(RuntimeError):  # that context runs somewhere: the job gets first-IO lineage
            context.run(scope_var.set, child)


_POOL_WORKER = getattr(_pool_thread, "_worker", None)


def _start_wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    scope = current()
    if scope is not None and getattr(instance, "_target", None) is not _POOL_WORKER:
        if frame_is_library(sys._getframe(2)):  # a library's own thread: not numbered, see the docstring
            instance.run = functools.partial(_thread_in, _in_scope, scope, instance.run)
        else:
            instance.run = functools.partial(_thread_in, _in_child, _spawn(scope), instance.run)
    return wrapped(*args, **kwargs)


def _thread_in(enter: Callable[..., Any], scope: Scope, run: Callable[[], Any]) -> Any:
    """A started thread's `run` in its scope (`enter`: `_in_scope` or `_in_child`). The thread holds this in its
    own `run` attribute, which points back at the thread (`run` is bound to it): dropped when it has run, so a
    finished thread is no cycle left to the collector, with the execution it belonged to."""
    try:
        return enter(scope, run)
    finally:
        thread = getattr(run, "__self__", None)
        attribute = vars(thread).get("run") if isinstance(thread, threading.Thread) else None
        if isinstance(attribute, functools.partial) and attribute.func is _thread_in:
            del thread.run  # type: ignore[union-attr]


def _submit_wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    scope = current()
    if scope is None or not args:
        return wrapped(*args, **kwargs)
    child = _spawn(scope)
    _enter_copied_context(args[0], child)
    ran: list[int] = []  # the worker thread that runs the job, once it does
    future = wrapped(functools.partial(_in_job, child, ran, args[0]), *args[1:], **kwargs)
    if child.session is not None:
        future.add_done_callback(_job_done(child, ran))
    else:  # its end is when its future is done (result set), not when the function returns
        future.add_done_callback(functools.partial(_record_end, child))
    return future


class ThreadsInterceptor:
    kind = "threads"

    def patches(self) -> list[Patch]:
        return [
            Patch(threading.Thread, "start", wrap_method(vars(threading.Thread)["start"], _start_wrapper)),
            Patch(ThreadPoolExecutor, "submit", wrap_method(vars(ThreadPoolExecutor)["submit"], _submit_wrapper)),
        ]

    def rebind(self) -> dict[int, Any]:
        return {}
