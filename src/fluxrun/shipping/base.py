"""A bounded queue drained by one background thread, so the request path never waits on sealing or IO.

When the queue is full the newest execution is dropped and counted with its reason, in the manner
of sentry-python's `record_lost_event`; a log line says so the first time.
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from fluxrun._internal import logger, report_internal_error

__all__ = ["BackgroundWorker"]

_STOP = object()


class BackgroundWorker:
    """Runs `process(item)` for each submitted item on a daemon thread; never raises into the caller."""

    def __init__(self, process: Callable[[Any], None], *, max_queue: int, name: str) -> None:
        self._process = process
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._name = name
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.stats: Counter[str] = Counter()
        self._warned_drop = False

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

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
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                self._process(item)
            except Exception as exc:
                self.stats["failed"] += 1
                report_internal_error(f"{self._name} worker", exc)
            finally:
                self._queue.task_done()

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted so far is processed; False if `timeout` ran out first."""
        if self._thread is None:
            return True
        done = threading.Event()

        def wait() -> None:
            self._queue.join()
            done.set()

        threading.Thread(target=wait, daemon=True, name=f"{self._name}-flush").start()
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
