"""Shipping to a FluxRun server (`FLUXRUN_DSN`): a bounded queue, one sender thread, batches, a spool.

`write` runs on the sealing thread and never waits on the network: it appends to a bounded in-memory
queue (count and bytes); when that is full it puts the bundle in the spool on local disk; when that is
full too it drops the bundle and counts why. The sender thread takes batches from the queue (or the
spool) and hands each to the transport (`HttpTransport.deliver`: one POST of `encode_batch` to
`/v1/executions`, sorted into delivered, dropped and to retry), and follows the `RetryPolicy`:

- a failed batch is sent again after a backoff with jitter, or after the server's Retry-After;
- once the server counts as down, the batch and everything queued behind it go to the spool, and the
  oldest spooled batch probes the server at growing intervals; once it answers, the spool drains, oldest
  first;
- what the server will never take is dropped, with a count per reason and one log line per reason.

Delivery is at least once: a batch whose answer was lost is sent again, and the server stores a bundle
id once. The sender uses its own `random.Random` and clock, so shipping never records itself.
"""

from __future__ import annotations

import random
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from time import monotonic  # bound at import: FluxRun's own bookkeeping never calls a patched clock

from fluxrun._internal import logger, real_urandom, report_internal_error
from fluxrun.shipping.base import after_fork_in_child, start_thread
from fluxrun.shipping.policy import RetryPolicy, parse_retry_after
from fluxrun.shipping.spool import Spool
from fluxrun.shipping.transport import Bundle, Endpoint, HttpTransport, Outcome, encode_batch, parse_dsn

__all__ = ["Clock", "Endpoint", "HttpSink", "ShipConfig", "encode_batch", "parse_dsn", "parse_retry_after"]

MiB = 1024 * 1024


@dataclass(frozen=True)
class ShipConfig:
    """Bounds and timings of the sender. The defaults suit a web app; tests shrink them."""

    spool_dir: Path
    max_queue: int = 1000  # bundles waiting in memory for the sender...
    max_queue_bytes: int = 16 * MiB  # ...and their bytes; beyond either, bundles go to the spool
    max_batch_bundles: int = 100
    max_batch_bytes: int = 1 * MiB  # before compression; one larger bundle still goes alone
    linger: float = 0.05  # seconds the first bundle waits for others to share its request
    timeout: float = 10.0  # per request (connect, send, each read)
    max_attempts: int = 3  # failures in a row before a batch is spooled and the server counts as down
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    max_retry_after: float = 600.0  # a Retry-After longer than this is taken as this
    spool_max_files: int = 10_000
    spool_max_bytes: int = 64 * MiB
    spool_poll: float = 5.0  # how often an idle sender looks for spooled bundles (from other processes too)
    compress: bool = True

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy(self.backoff_base, self.backoff_cap, self.max_retry_after, self.max_attempts)


class Clock:
    """Time for the retry schedule. Tests pass a fake one, so backoff and Retry-After cost no real time.

    Flush and shutdown deadlines are real time whatever the clock, since they bound how long the app waits.
    """

    def now(self) -> float:
        return monotonic()

    def wait(self, cond: threading.Condition, timeout: float | None) -> None:
        cond.wait(timeout)


# -- the sink -----------------------------------------------------------------------------------------


class HttpSink:
    """Ships sealed bundles to a FluxRun server from one background thread; see the module docstring.

    Counters (bundles unless named otherwise), merged into `fluxrun.stats()`: `sent` (acknowledged by the
    server), `batches` (POSTs answered 2xx), `retried` (bundles sent again after a failed attempt),
    `spooled`, `delivered_from_spool` (part of `sent`), and `dropped_<reason>`: `spool_full`,
    `spool_error`, `spool_unreadable`, `http_<status>` (a 4xx such as 401 or 413), `rejected_<reason>`
    (the server refused that bundle alone: `tampered`, `unknown_key_id`...).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        config: ShipConfig,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.config = config
        self.policy = config.policy
        self.spool = Spool(config.spool_dir, max_files=config.spool_max_files, max_bytes=config.spool_max_bytes)
        self._clock = clock or Clock()
        self._rng = rng or random.Random(real_urandom(16))
        self._closed = False
        self._reset()
        after_fork_in_child(self)
        if self.spool.usage()[0]:  # bundles left by an earlier run: deliver them without waiting for a new one
            with self._cond:
                self._ensure_thread()

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._stats_lock = threading.Lock()
        self._stats: Counter[str] = Counter()
        self._logged: set[str] = set()
        self._queue: deque[Bundle] = deque()
        self._queued_bytes = 0
        self._busy = 0  # bundles taken from the queue, not yet delivered, dropped, requeued or spooled
        self._inflight: list[Bundle] = []
        self._thread: threading.Thread | None = None
        self._closing = False
        self._stop = False
        self._flush_deadlines: list[float] = []  # real monotonic time
        self._failures = 0  # failed attempts in a row
        self._down = False  # a batch was spooled: new bundles go to the spool until a probe succeeds
        self._retry_at = 0.0  # clock time before which nothing is sent
        self._spool_check_at = 0.0  # clock time of the next look at the spool
        self._spool_turn = False
        self.transport = HttpTransport(self.endpoint, compress=self.config.compress)

    def _after_fork_in_child(self) -> None:
        # The parent still owns (and will send) what it had queued; the child starts empty, with its own
        # counters, and reseeds its jitter so a fleet of workers does not retry in lockstep.
        self._reset()
        self._rng.seed(real_urandom(16))

    # -- counters and messages ----------------------------------------------------------------------
    def _count(self, key: str, n: int = 1) -> None:
        if n:
            with self._stats_lock:
                self._stats[key] += n

    def _drop(self, reason: str, n: int, message: str) -> None:
        self._count(f"dropped_{reason}", n)
        self._log_once(reason, message)

    def _log_once(self, key: str, message: str) -> None:
        with self._stats_lock:
            if key in self._logged:
                return
            self._logged.add(key)
        logger.warning("FluxRun: %s", message)

    def stats(self) -> dict[str, int]:
        counts = dict.fromkeys(("sent", "batches", "retried", "spooled", "delivered_from_spool"), 0)
        with self._stats_lock:
            counts.update(self._stats)
        with self._cond:
            counts["pending"] = len(self._queue) + self._busy
        counts["spool_files"], counts["spool_bytes"] = self.spool.usage()
        return counts

    # -- the sealing thread's side ------------------------------------------------------------------
    def write(self, name: str, data: bytes) -> None:
        """Queue one bundle for the sender; spool it if the queue is full; drop it if the spool is full too."""
        try:
            bundle = Bundle(name, data, self._clock.now())
            with self._cond:
                if (
                    not self._closed
                    and len(self._queue) < self.config.max_queue
                    and self._queued_bytes + len(data) <= self.config.max_queue_bytes
                ):
                    self._queue.append(bundle)
                    self._queued_bytes += len(data)
                    self._ensure_thread()
                    self._cond.notify_all()
                    return None
            self._to_spool([bundle])
        except Exception as exc:
            report_internal_error("queueing a bundle for the server", exc)
        return None

    def _ensure_thread(self) -> None:
        """Start the sender if it is not running (lazily, and again in a forked child). Hold `_cond`."""
        if not self._closed and (self._thread is None or not self._thread.is_alive()):
            self._stop = False
            self._thread = start_thread(self._run, "fluxrun-sender")

    def _to_spool(self, bundles: list[Bundle]) -> int:
        """Put bundles in the spool, counting each as spooled or dropped; how many were spooled."""
        spooled = 0
        for bundle in bundles:
            try:
                stored = self.spool.put(bundle.name, bundle.data)
            except OSError as exc:
                self._drop(
                    "spool_error",
                    1,
                    f"could not write to the spool at {self.spool.directory} ({exc}); dropping bundles that cannot "
                    "wait in memory (counted as dropped_spool_error in fluxrun.stats()).",
                )
                continue
            if stored:
                spooled += 1
            else:
                self._drop(
                    "spool_full",
                    1,
                    f"the spool at {self.spool.directory} is full ({self.spool.max_files} files or "
                    f"{self.spool.max_bytes} bytes) while the server cannot take bundles; dropping new bundles "
                    "and keeping the oldest (counted as dropped_spool_full in fluxrun.stats()).",
                )
        self._count("spooled", spooled)
        if spooled:
            with self._cond:
                self._spool_check_at = 0.0
                self._ensure_thread()
                self._cond.notify_all()
        return spooled

    # -- flush and close (the app's threads) --------------------------------------------------------
    def flush(self, timeout: float) -> bool:
        """Wait until every bundle written so far is delivered, dropped for a reason, or spooled."""
        try:
            return self._flush(timeout)
        except Exception as exc:
            report_internal_error("flushing bundles to the server", exc)
            return False

    def _flush(self, timeout: float) -> bool:
        deadline = monotonic() + max(timeout, 0.0)
        # The sender stops waiting on the server a little before the deadline, so that spooling what
        # the server could not take in time still fits within it.
        sender_deadline = deadline - min(0.25, max(timeout, 0.0) * 0.2)
        with self._cond:
            if not self._queue and not self._busy:
                return True
            self._ensure_thread()
            self._flush_deadlines.append(sender_deadline)
            self._cond.notify_all()
            try:
                while self._queue or self._busy:
                    left = deadline - monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            finally:
                self._flush_deadlines.remove(sender_deadline)
            return not self._queue and not self._busy

    def close(self, timeout: float) -> bool:
        """Flush within `timeout`, stop the sender, and spool whatever is still in memory."""
        try:
            deadline = monotonic() + max(timeout, 0.0)
            with self._cond:
                self._closing = True
                self._cond.notify_all()
            flushed = self.flush(timeout)
            with self._cond:
                self._stop = True
                self._closed = True
                leftovers = list(self._queue)
                self._queue.clear()
                self._queued_bytes = 0
                thread = self._thread
                self._cond.notify_all()
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - monotonic()) + 0.05)
            in_flight: list[Bundle] = []
            if thread is not None and thread.is_alive():
                # Stuck in a request past the deadline: keep a copy on disk, or the batch dies with the
                # process. If the request does succeed, the server stores the bundle id only once.
                with self._cond:
                    in_flight = list(self._inflight)
            else:
                self.transport.close()
            wanted = leftovers + in_flight
            saved = self._to_spool(wanted) if wanted else 0
            return flushed or saved == len(wanted)
        except Exception as exc:
            report_internal_error("closing the sender", exc)
            return False

    # -- the sender thread --------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                job = self._next_job()
                if job is None:
                    return
                job()
            except Exception as exc:
                report_internal_error("sending bundles to the server", exc)
                with self._cond:
                    self._clock.wait(self._cond, 1.0)  # a bug must not turn into a busy loop

    def _flush_left(self) -> float | None:
        """Real seconds left before the nearest flush deadline, or None when nobody is flushing."""
        return min(self._flush_deadlines) - monotonic() if self._flush_deadlines else None

    def _next_job(self) -> Callable[[], None] | None:
        with self._cond:
            while True:
                if self._stop:
                    return None
                now = self._clock.now()
                backoff_left = self._retry_at - now
                flush_left = self._flush_left()
                hurry = flush_left is not None or self._closing
                spool_due = now >= self._spool_check_at and not self._closing
                if self._queue:
                    if self.policy.spool_rather_than_wait(
                        backoff_left, down=self._down, closing=self._closing, flush_left=flush_left
                    ):
                        return partial(self._spool_queue, self._take(len(self._queue), None))
                    prefer_spool = spool_due and (self._down or self._spool_turn) and not hurry
                    if backoff_left <= 0 and not prefer_spool:
                        linger_left = self._queue[0].enqueued + self.config.linger - now
                        full = (
                            len(self._queue) >= self.config.max_batch_bundles
                            or self._queued_bytes >= self.config.max_batch_bytes
                        )
                        if linger_left > 0 and not hurry and not full:
                            self._clock.wait(self._cond, linger_left)
                            continue
                        self._spool_turn = True
                        return partial(
                            self._send_queued, self._take(self.config.max_batch_bundles, self.config.max_batch_bytes)
                        )
                if backoff_left <= 0 and spool_due:
                    self._spool_turn = False
                    return self._drain_spool
                if backoff_left > 0:  # the spool waits for the backoff too
                    self._clock.wait(self._cond, backoff_left)
                elif self._closing:  # nothing left to do but stop
                    self._clock.wait(self._cond, None)
                else:
                    self._clock.wait(self._cond, max(0.001, self._spool_check_at - now))

    def _take(self, count: int, max_bytes: int | None) -> list[Bundle]:
        """Pop the oldest queued bundles (at least one) into the busy set. Hold `_cond`."""
        taken: list[Bundle] = []
        size = 0
        while self._queue and len(taken) < count:
            nxt = self._queue[0]
            if taken and max_bytes is not None and size + len(nxt.data) > max_bytes:
                break
            taken.append(self._queue.popleft())
            size += len(nxt.data)
        self._queued_bytes -= size
        self._busy += len(taken)
        return taken

    def _settle(self, count: int) -> None:
        with self._cond:
            self._busy -= count
            self._cond.notify_all()

    def _spool_queue(self, bundles: list[Bundle]) -> None:
        try:
            self._to_spool(bundles)
        finally:
            self._settle(len(bundles))

    def _send_queued(self, batch: list[Bundle]) -> None:
        try:
            with self._cond:
                self._inflight = batch
                repeat = self._failures > 0
            self._count("retried", len(batch) if repeat else 0)
            try:
                outcome = self._attempt(batch)
            except Exception:
                self._to_spool(batch)  # a bug of ours must not lose the batch
                raise
            finally:
                with self._cond:
                    self._inflight = []
            self._account(outcome, from_spool=False)
            if outcome.retry:
                if self._failed(outcome, from_spool=False):
                    self._to_spool(outcome.retry)
            else:
                self._succeeded()
        finally:
            self._settle(len(batch))

    def _drain_spool(self) -> None:
        with self.spool.claim() as mine:
            entries, unreadable = (
                self.spool.oldest(self.config.max_batch_bundles, self.config.max_batch_bytes) if mine else ([], [])
            )
            if unreadable:
                self.spool.remove(unreadable)
                self._drop(
                    "spool_unreadable",
                    len(unreadable),
                    f"found unreadable files in the spool at {self.spool.directory} (left by a crash mid-write?); "
                    "removed them (counted as dropped_spool_unreadable in fluxrun.stats()).",
                )
            if not entries:  # another process is draining it, or it is empty
                with self._cond:
                    self._spool_check_at = self._clock.now() + self.config.spool_poll
                return
            now = self._clock.now()
            batch = [Bundle(e.name, e.data, now, e.path) for e in entries]
            with self._cond:
                repeat = self._failures > 0
            self._count("retried", len(batch) if repeat else 0)
            outcome = self._attempt(batch)
            self._account(outcome, from_spool=True)
            finished = outcome.delivered + [bundle for bundle, _ in outcome.dropped]
            self.spool.remove([b.path for b in finished if b.path is not None])
            if outcome.retry:
                self._failed(outcome, from_spool=True)
            else:
                self._succeeded()
                with self._cond:
                    self._spool_check_at = 0.0  # more may be waiting

    def _succeeded(self) -> None:
        with self._cond:
            was_down = self._down
            self._failures = 0
            self._down = False
            self._retry_at = 0.0
            if was_down:
                self._spool_check_at = 0.0  # deliver what waited in the spool
        if was_down:
            logger.info("FluxRun reached %s again; delivering spooled bundles, oldest first", self.endpoint.url)

    def _failed(self, outcome: Outcome, *, from_spool: bool) -> bool:
        """Schedule the next attempt; requeue a memory batch, or say (True) that it must go to the spool."""
        with self._cond:
            self._failures += 1
            delay = self.policy.delay(self._failures, outcome.retry_after, self._rng.random())
            self._retry_at = self._clock.now() + delay
            give_up = self.policy.gives_up(
                self._failures, delay, from_spool=from_spool, closing=self._closing, flush_left=self._flush_left()
            )
            if give_up:
                self._down = True
            elif not from_spool:
                self._queue.extendleft(reversed(outcome.retry))  # first again, in the same order
                self._queued_bytes += sum(len(b.data) for b in outcome.retry)
            self._cond.notify_all()
        if give_up:
            self._log_once(
                "down",
                f"cannot deliver bundles to {self.endpoint.url} ({outcome.problem}); keeping them in the spool at "
                f"{self.spool.directory} and retrying with backoff (logged once).",
            )
        return give_up and not from_spool

    def _account(self, outcome: Outcome, *, from_spool: bool) -> None:
        self._count("sent", len(outcome.delivered))
        self._count("batches", outcome.batches)
        if from_spool:
            self._count("delivered_from_spool", len(outcome.delivered))
        by_reason = Counter(reason for _, reason in outcome.dropped)
        for reason, n in by_reason.items():
            self._drop(reason, n, outcome.notes.get(reason, f"dropped {n} bundles ({reason})"))

    def _attempt(self, batch: list[Bundle]) -> Outcome:
        return self.transport.deliver(batch, self._request_timeout())

    def _request_timeout(self) -> float:
        with self._cond:
            left = self._flush_left()
        timeout = self.config.timeout
        return timeout if left is None else max(0.05, min(timeout, left))

    def __repr__(self) -> str:  # never show the token
        return f"HttpSink({self.endpoint.url}, spool={self.spool.directory})"
