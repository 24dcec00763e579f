"""The seam between sealing and delivery: the `Sink` protocol, the sealing worker, and fork safety.

Sealing runs on one background thread fed by a bounded queue, so the request path never waits on
sealing or IO. When the queue is full the newest execution is dropped and counted with its reason, in
the manner of sentry-python's `record_lost_event`; a log line says so the first time.

Pre-fork servers (gunicorn) fork after `fluxrun.init`: a child inherits the parent's queues, locks
that another thread may have held at the fork, and no threads at all. Every worker and sink registers
with `after_fork_in_child`, so a child starts with fresh queues and locks and restarts its threads
lazily on first use, without re-sending what the parent still owns.
"""

from __future__ import annotations

import contextvars
import os
import queue
import threading
import weakref
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from fluxrun._internal import logger, report_internal_error

__all__ = ["BackgroundWorker", "Sink", "after_fork_in_child", "start_thread"]

_STOP = object()


class Sink(Protocol):
    """Where sealed bundles go. `write` runs on the sealing thread: it must neither block for long nor raise."""

    def write(self, name: str, data: bytes) -> Path | None:
        """Take one sealed bundle; a file path when it was written to a folder, else None."""
        ...

    def flush(self, timeout: float) -> bool:
        """True once every bundle written so far is delivered or safely on disk."""
        ...

    def close(self, timeout: float) -> bool:
        """Flush, then stop any background thread; nothing written before is lost silently."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters for `fluxrun.stats()`."""
        ...


class _ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


_fork_aware: weakref.WeakSet[Any] = weakref.WeakSet()


def _reinit_after_fork() -> None:
    for obj in list(_fork_aware):
        try:
            obj._after_fork_in_child()
        except Exception as exc:  # pragma: no cover - a child that cannot reset simply ships nothing
            report_internal_error("resetting after fork", exc)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_after_fork)


def after_fork_in_child(obj: _ForkAware) -> None:
    """Have `obj._after_fork_in_child()` run in every forked child while `obj` is alive."""
    _fork_aware.add(obj)


def start_thread(target: Callable[[], None], name: str) -> threading.Thread:
    """A daemon thread running `target` in an empty context, so nothing it does can join a capture."""
    context = contextvars.Context()
    thread = threading.Thread(target=lambda: context.run(target), name=name, daemon=True)
    thread.start()
    return thread


class BackgroundWorker:
    """Runs `process(item)` for each submitted item on a daemon thread; never raises into the caller."""

    def __init__(self, process: Callable[[Any], None], *, max_queue: int, name: str) -> None:
        self._process = process
        self._max_queue = max_queue
        self._name = name
        self.stats: Counter[str] = Counter()
        self._reset()
        after_fork_in_child(self)

    def _reset(self) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=self._max_queue)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._warned_drop = False

    def _after_fork_in_child(self) -> None:
        # The parent seals what it queued; the child starts empty, with its own counters.
        self._reset()
        self.stats = Counter()

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = start_thread(self._run, self._name)

    def submit(self, item: Any) -> bool:
        try:
            self._ensure_thread()
            self._queue.put_nowait(item)
            self.stats["queued"] += 1
            return True
        except queue.Full:
            self.stats["dropped_queue_full"] += 1
            if not self._warned_drop:
                self._warned_drop = True
                logger.warning(
                    "FluxRun's queue is full (%d waiting); dropping captured executions until it drains. "
                    "Raise max_queue (FLUXRUN_MAX_QUEUE) if this persists.",
                    self._queue.maxsize,
                )
            return False
        except Exception as exc:
            report_internal_error("queueing a bundle", exc)
            return False

    def _run(self) -> None:
        work = self._queue  # a fork replaces self._queue; this thread keeps the one it was started for
        while True:
            item = work.get()
            try:
                if item is _STOP:
                    return
                self._process(item)
            except Exception as exc:
                self.stats["failed"] += 1
                report_internal_error(f"{self._name} worker", exc)
            finally:
                work.task_done()

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted so far is processed; False if `timeout` ran out first."""
        if self._thread is None:
            return True
        done = threading.Event()
        work = self._queue

        def wait() -> None:
            work.join()
            done.set()

        start_thread(wait, f"{self._name}-flush")
        return done.wait(timeout)

    def close(self, timeout: float) -> bool:
        flushed = self.flush(timeout)
        thread = self._thread
        if thread is not None and thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=max(timeout, 0.1))
                thread.join(timeout)
            except queue.Full:  # pragma: no cover - still busy after the flush timeout
                pass
        self._thread = None
        return flushed
