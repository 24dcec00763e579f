"""The replay scheduler: recorded outcomes are released in their recorded completion order.

At capture each fetch and boundary call takes a number from the execution's completion clock when
its outcome is known (`data["done"]`). At replay nothing sleeps, so every call could be answered at
once; instead a call's answer is held until every answer recorded as completing before it has been
released, across tasks and threads:

- An asyncio caller awaits a future on its own loop. A loop releases the next answer only when it is
  quiescent (nothing else ready to run), as if that answer had just arrived from the network while
  everything else was waiting: the task that got the previous answer runs until it waits again first.
- A thread caller waits on a condition and goes when its answer is next in order and every other running
  thread FluxRun knows (the threads and pool jobs it numbered, a synchronous root) is parked: waiting here,
  finished (a pool job once its future is done), or blocked in `threading` (a lock, condition, event,
  queue or join), as every thread was while the recorded answer was on its way; so a root waiting in
  `as_completed` sees the futures complete in the recorded order. The ends of numbered threads and pool jobs
  have completion numbers too (`task_ends`): a thread still running that had ended before this answer at
  capture is waited for (it may only be paused: a starved CPU, a full collection), up to `STALL_LIMIT` without
  activity. Which threads were busy and which parked when each answer came is recorded too (`task_states`):
  one parked then is waited for until it parks (a root starved of CPU between its submits and its
  `as_completed`), up to `PARKED_LIMIT` without activity; one busy then, or one that ended after the answer,
  need not park. Otherwise (a bundle from before those, a library's own thread), after `BUSY_GRACE` without
  activity it goes anyway (a thread may be busy or blocked where FluxRun cannot see). A blocking call made on
  an event loop's own thread is answered at once (waiting would block the loop).
- A call recorded with no outcome (still in flight when the execution ended, or cancelled by the app)
  never completes: an asyncio caller awaits a future that never resolves, so `wait_for`,
  `asyncio.timeout`, `gather`/`TaskGroup` cancellation end it as they did (once the loop has nothing else
  to run, its clock is moved on to its next timer, so a deadline fires at once rather than after the seconds
  it took at capture; asyncio's own loops only); a thread caller blocks until
  the execution ends and then gets `PendingAtEnd` in that thread. Should the code wait for such a call with
  nothing else left to run (a fix that now needs its answer), the wait would never end: once the loop has
  been idle for `DEADLOCK_GRACE` seconds (nothing ready, no timer of its own, no answer held, no thread
  FluxRun started running), or nothing happened for `PENDING_LIMIT`, the oldest such wait raises
  `NeverAnswered`, a divergence that names the call.

Stall rule (a predecessor that the replayed code never requests, such as after a fix): when answers are
held, the next one in order has not been requested, nothing has happened in the replay for
`STALL_GRACE` seconds (no call requested or released, no task, thread or job created), the loops
holding answers are quiescent and no thread FluxRun started (or a synchronous root) is running, the
earliest held answer is released. Untracked activity (a thread a library started, a root blocked on a
future) cannot be seen, so after `STALL_LIMIT` seconds without progress the earliest is released anyway,
and a pending thread call gives up after `PENDING_LIMIT` seconds. None of these waits happen in a replay
whose code makes the recorded calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from asyncio.events import _get_running_loop
from collections.abc import Callable
from typing import Any

from fluxrun._context import parked
from fluxrun._internal import perf_ns
from fluxrun.errors import ReplayDivergence
from fluxrun.model.schema import AnyEvent, EventError

__all__ = [
    "BUSY_GRACE",
    "DEADLOCK_GRACE",
    "PARKED_LIMIT",
    "PENDING_LIMIT",
    "STALL_GRACE",
    "STALL_LIMIT",
    "NeverAnswered",
    "PendingAtEnd",
    "ReplayScheduler",
    "is_pending",
]

DEADLOCK_GRACE = 0.5
STALL_GRACE = 0.05
# how long a thread whose answer is next waits for a known thread that is running (not parked) and whose end
# was not recorded (a root, a bundle from before `task_ends`) before it goes anyway: longer than STALL_GRACE,
# since that thread may be the one just given the previous answer, paused before it completes its future, or a
# root between its submits and its `as_completed`, starved of CPU on a loaded machine (0.25 s was seen to be
# too short there; a replay waits this long only where a thread stays busy where FluxRun cannot see)
BUSY_GRACE = 1.0
STALL_LIMIT = 2.0
# how long an answer waits for a thread that was parked when it came at capture, and is busy at replay, to park:
# the recording says it will (a replay of the recorded code waits only while that thread is starved of CPU)
PARKED_LIMIT = 5.0
PENDING_LIMIT = 10.0
_POLL = 0.002


class PendingAtEnd(ReplayDivergence):
    """A call that was still in flight when the recorded execution ended, made from a thread at replay.

    Raised in that thread only, once the replayed execution has ended (it could never have completed);
    it does not fail the replay.
    """


class NeverAnswered(ReplayDivergence):
    """The replayed code waits, with nothing else left to run, for a call that was still in flight when the
    recorded execution ended: the recording has no answer for it, so the wait would never end."""


def _cancelled(error: EventError) -> bool:
    return str(error.get("type", "")).endswith("CancelledError")


def is_pending(event: AnyEvent, outcome_key: str) -> bool:
    """True when the recording has no outcome for the call: it never completed during the execution."""
    error = event.get("error")
    if error is not None:
        return _cancelled(error)
    data = event.get("data") or {}
    return "done" not in data and outcome_key not in data


class _Held:
    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop | None, future: asyncio.Future[None] | None) -> None:
        self.loop = loop  # None: a thread waiting on the condition
        self.future = future


class ReplayScheduler:
    """Holds answers until their recorded turn (see the module docstring for the rules)."""

    def __init__(self, events: list[AnyEvent], ends: object = None, states: object = None) -> None:
        order = set()
        for event in events:
            done = (event.get("data") or {}).get("done") if isinstance(event.get("data"), dict) else None
            if isinstance(done, int) and not (event.get("error") and _cancelled(event["error"])):
                order.add(done)
        self._order = sorted(order)
        self._ordered = frozenset(order)
        self._next = 0  # index in _order of the earliest answer not yet released
        self._released: set[int] = set()
        self._held: dict[int, _Held] = {}
        self._pumps: dict[asyncio.AbstractEventLoop, asyncio.Handle] = {}
        self._idle_pumps: dict[asyncio.AbstractEventLoop, int] = {}
        self._cond = threading.Condition()
        self._running: set[int] = set()  # threads FluxRun started (and a synchronous root), not waiting here
        self._paths: dict[int, str] = {}  # their lineage, for the numbered ones
        self._ends = _recorded_ends(ends)  # lineage -> completion number of its end at capture
        self._states = _recorded_states(states)  # completion number -> (lineages busy, lineages parked) then
        self._never: dict[asyncio.Future[None], tuple[asyncio.AbstractEventLoop, str, int]] = {}  # pending waits
        self._watchdogs: dict[asyncio.AbstractEventLoop, asyncio.TimerHandle] = {}
        self._last = perf_ns()
        self._closed = False

    # -- bookkeeping -----------------------------------------------------------------------------------
    def touch(self) -> None:
        """Something happened in the replay (a call, a new task, thread or job): not stalled."""
        self._last = perf_ns()

    def thread_started(self, path: str | None = None) -> None:
        """The current thread runs a numbered thread or pool job (its lineage `path`), or a synchronous root."""
        with self._cond:
            ident = threading.get_ident()
            self._running.add(ident)
            if path is not None:
                self._paths[ident] = path
            self._last = perf_ns()

    def thread_finished(self, ident: int | None = None) -> None:
        """The current thread's (or thread `ident`'s) numbered thread or pool job has finished."""
        with self._cond:
            ident = threading.get_ident() if ident is None else ident
            self._running.discard(ident)
            self._paths.pop(ident, None)
            self._last = perf_ns()
            self._cond.notify_all()

    def close(self) -> None:
        """The replayed execution ended: threads still waiting give up (see `PendingAtEnd`)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @staticmethod
    def completion(event: AnyEvent) -> int | None:
        data = event.get("data")
        done = data.get("done") if isinstance(data, dict) else None
        return done if isinstance(done, int) else None

    # -- the order -----------------------------------------------------------------------------------
    def _frontier(self) -> int | None:
        return self._order[self._next] if self._next < len(self._order) else None

    def _release(self, done: int) -> None:
        """Mark `done` released (under the lock) and wake whoever may go next."""
        self._released.add(done)
        held = self._held.pop(done, None)
        if held is not None and held.future is not None and held.loop is not None:
            loop, future = held.loop, held.future
            if _get_running_loop() is loop:
                if not future.done():
                    future.set_result(None)
            else:
                with contextlib.suppress(RuntimeError):  # that loop is closed
                    loop.call_soon_threadsafe(_resolve, future)
        while self._next < len(self._order) and self._order[self._next] in self._released:
            self._next += 1
        self._last = perf_ns()
        self._cond.notify_all()
        for other in {h.loop for h in self._held.values() if h.loop is not None}:
            self._kick(other)

    def _stalled(self) -> bool:
        quiet = (perf_ns() - self._last) / 1e9
        if quiet >= STALL_LIMIT:
            return True
        if quiet < STALL_GRACE or self._running:
            return False
        return all(_quiescent(h.loop) for h in self._held.values() if h.loop is not None)

    def _release_earliest(self) -> None:
        if self._held:
            self._release(min(self._held))

    def _kick(self, loop: asyncio.AbstractEventLoop, delay: float = 0.0) -> None:
        """Make sure a pump runs on `loop` (soon, or after `delay`). Called under the lock."""
        handle = self._pumps.get(loop)
        if handle is not None:
            if delay or not isinstance(handle, asyncio.TimerHandle):
                return
            handle.cancel()  # a pump is waiting on a timer: run it now instead
        try:
            if _get_running_loop() is loop:
                self._pumps[loop] = (
                    loop.call_later(delay, self._pump, loop) if delay else loop.call_soon(self._pump, loop)
                )
            else:  # from another thread: call_soon_threadsafe, and the pump itself re-arms any delay
                self._pumps[loop] = loop.call_soon_threadsafe(self._pump, loop)
        except RuntimeError:  # pragma: no cover - that loop is closed
            self._pumps.pop(loop, None)

    def _pump(self, loop: asyncio.AbstractEventLoop) -> None:
        """Runs on `loop`: release this loop's next answer once the loop is quiescent."""
        with self._cond:
            self._pumps.pop(loop, None)
            mine = [d for d, h in self._held.items() if h.loop is loop]
            if not mine:
                return
            if not _quiescent(loop) and self._idle_pumps.get(loop, 0) < 3:
                if not hasattr(loop, "_ready"):
                    self._idle_pumps[loop] = self._idle_pumps.get(loop, 0) + 1
                self._kick(loop)
                return
            self._idle_pumps.pop(loop, None)
            frontier = self._frontier()
            if frontier is not None and frontier in mine:
                self._release(frontier)
                self._kick(loop)  # the next one waits for quiescence again
                return
            if (frontier is None or frontier not in self._held) and self._stalled():
                self._release_earliest()
                self._kick(loop)
                return
            self._kick(loop, _POLL)  # the next answer is someone else's (or not requested yet): look again

    # -- callers -------------------------------------------------------------------------------------
    async def turn(self, event: AnyEvent, pending: bool, describe: str = "a call") -> None:
        """Await this answer's turn (asyncio callers)."""
        loop = asyncio.get_running_loop()
        if pending:
            await self._never_resolves(loop, describe)
        done = self.completion(event)
        future: asyncio.Future[None] = loop.create_future()
        with self._cond:
            if done is None or done in self._released or done in self._held or done not in self._ordered:
                return
            self._held[done] = _Held(loop, future)
            self._last = perf_ns()
            self._kick(loop)
        try:
            await future
        except BaseException:
            with self._cond:  # cancelled while held: later answers must not wait for this one
                if done not in self._released:
                    self._release(done)
            raise

    async def _never_resolves(self, loop: asyncio.AbstractEventLoop, describe: str) -> None:
        """Only cancellation ends this wait, as it did at capture, unless nothing else can ever run."""
        future: asyncio.Future[None] = loop.create_future()
        with self._cond:
            self._never[future] = (loop, describe, perf_ns())
            self._last = perf_ns()
            self._watch(loop)
        try:
            await future
        finally:
            with self._cond:
                self._never.pop(future, None)

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Arm `loop`'s deadlock watchdog (under the lock)."""
        if loop not in self._watchdogs:
            self._watchdogs[loop] = loop.call_later(DEADLOCK_GRACE / 5, self._check_deadlock, loop)

    def _check_deadlock(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._cond:
            self._watchdogs.pop(loop, None)
            waits = sorted((since, future) for future, (where, _, since) in self._never.items() if where is loop)
            if not waits:
                return
            quiet = (perf_ns() - self._last) / 1e9
            settled = not self._held and not self._running and _quiescent(loop)
            if settled and quiet >= STALL_GRACE and _move_clock_to_next_timer(loop, self._own_timers()):
                self._watch(loop)  # a deadline will fire now: the wait ends as it did (a TimeoutError)
                return
            idle = settled and not self._timers(loop)
            if (idle and quiet >= DEADLOCK_GRACE) or quiet >= PENDING_LIMIT:
                future = waits[0][1]
                describe = self._never.pop(future)[1]
                self._last = perf_ns()
                future.set_exception(
                    NeverAnswered(
                        f"{describe} was still in flight when the recorded execution ended, so the recording has "
                        "no answer for it, and the code now waits for that answer with nothing else left to run: "
                        "supply it with fluxrun.replay.Answers (a fix that needs it), or capture the failure anew",
                        call=describe,
                        kind="pending",
                    )
                )
            if len(waits) > 1 or not waits[0][1].done():
                self._watch(loop)

    def _own_timers(self) -> Callable[[Any], bool]:
        ours = {id(h) for h in self._pumps.values()} | {id(h) for h in self._watchdogs.values()}
        return lambda handle: id(handle) in ours or handle._callback == self._pump

    def _timers(self, loop: asyncio.AbstractEventLoop) -> bool:
        """True when `loop` has a live timer that is not the scheduler's own (something will still run)."""
        own = self._own_timers()
        scheduled = getattr(loop, "_scheduled", None)
        if scheduled is None:
            return True  # not asyncio's own loop: assume something may still run
        return any(not h.cancelled() and not own(h) for h in scheduled)

    def wait_turn(self, event: AnyEvent, pending: bool, describe: str) -> None:
        """Block until this answer's turn (thread callers)."""
        done = self.completion(event)
        on_loop = _get_running_loop() is not None
        if pending:
            if not on_loop:
                self._wait_for_end()
            raise PendingAtEnd(
                f"{describe} was still in flight when the recorded execution ended: it never completes at "
                "replay, and this thread was still waiting for it when the replayed execution ended",
                call=describe,
                kind="pending",
            )
        with self._cond:
            if done is None or done in self._released or done not in self._ordered:
                return
            if on_loop:  # a blocking call on an event loop's thread: waiting would block the loop
                self._release(done)
                return
            ident = threading.get_ident()
            was_running = ident in self._running
            self._running.discard(ident)
            self._held[done] = _Held(None, None)
            self._last = perf_ns()
            try:
                while done not in self._released:
                    if self._closed or (self._frontier() == done and self._others_parked(ident)):
                        self._release(done)
                        break
                    if self._frontier() not in self._held and self._stalled() and min(self._held) == done:
                        self._release(done)
                        break
                    self._cond.wait(_POLL * 5)
            finally:
                self._held.pop(done, None)
                if was_running:
                    self._running.add(ident)

    def _others_parked(self, ident: int) -> bool:
        """The thread whose answer is next may go: every other running thread FluxRun knows is parked, or was
        busy or had not ended yet when this answer came at capture, or the replay has been quiet long enough
        (see the module docstring)."""
        others = self._running - {ident}
        if not others:
            return True
        frames = sys._current_frames()
        busy = [other for other in others if not parked(frames.get(other))]
        if not busy:
            return True
        answer = self._frontier()
        paths = [self._paths.get(other, "") for other in busy]
        ends = [self._ends.get(path) for path in paths]
        busy_then, parked_then = self._states.get(answer, _NO_STATES) if answer is not None else _NO_STATES
        quiet = (perf_ns() - self._last) / 1e9
        if any(path in parked_then for path in paths):
            return quiet >= PARKED_LIMIT  # it was parked when this answer came: wait until it parks
        if answer is not None and any(end is not None and end < answer for end in ends):
            return quiet >= STALL_LIMIT  # it had ended before this answer came: wait for its end
        if answer is not None and all(
            path in busy_then or end is not None for path, end in zip(paths, ends, strict=True)
        ):
            return True  # each was busy, or still running, when this answer came
        return quiet >= BUSY_GRACE

    def _wait_for_end(self) -> None:
        ident = threading.get_ident()
        with self._cond:
            was_running = ident in self._running
            self._running.discard(ident)
            try:
                while not self._closed and (perf_ns() - self._last) / 1e9 < PENDING_LIMIT:
                    self._cond.wait(0.05)
            finally:
                if was_running:
                    self._running.add(ident)


def _recorded_ends(ends: object) -> dict[str, int]:
    """A bundle's `task_ends` (untrusted): lineage -> completion number, anything else left out."""
    if not isinstance(ends, dict):
        return {}
    return {path: end for path, end in ends.items() if type(path) is str and type(end) is int}


_NO_STATES: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())


def _recorded_states(states: object) -> dict[int, tuple[frozenset[str], frozenset[str]]]:
    """A bundle's `task_states` (untrusted): completion number -> (lineages busy, lineages parked) then;
    anything else left out."""
    if not isinstance(states, dict):
        return {}
    out = {}
    for key, value in states.items():
        if not (type(key) is str and key.isascii() and key.isdigit() and len(key) <= 18 and isinstance(value, dict)):
            continue
        busy, waiting = value.get("busy"), value.get("parked")
        if isinstance(busy, list) and isinstance(waiting, list):
            out[int(key)] = (
                frozenset(path for path in busy if type(path) is str),
                frozenset(path for path in waiting if type(path) is str),
            )
    return out


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _MovedClock:
    """An event loop's clock moved on by `offset` seconds: at replay nothing answers late, so when the loop has
    nothing left to run but a timer while the code waits for a call that never answered at capture, the clock
    goes to that timer (`asyncio.wait_for`'s or `asyncio.timeout`'s deadline fires at once, as it fired then)."""

    __slots__ = ("loop", "offset")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.offset = 0.0

    def __call__(self) -> float:
        return type(self.loop).time(self.loop) + self.offset


def _move_clock_to_next_timer(loop: asyncio.AbstractEventLoop, own: Callable[[Any], bool]) -> bool:
    """Move `loop`'s clock to its next live timer that is not the scheduler's own; False if there is none, or
    it is not asyncio's own loop (uvloop's clock is C: it keeps its time)."""
    scheduled = getattr(loop, "_scheduled", None)
    if scheduled is None or not isinstance(loop, asyncio.BaseEventLoop):
        return False
    due = [h.when() for h in scheduled if not h.cancelled() and not own(h)]
    if not due:
        return False
    ahead = min(due) - loop.time()
    if ahead <= 0:
        return False
    clock = vars(loop).get("time")
    if not isinstance(clock, _MovedClock):
        clock = _MovedClock(loop)
        loop.time = clock  # type: ignore[method-assign]
    clock.offset += ahead
    return True


def _quiescent(loop: asyncio.AbstractEventLoop) -> bool:
    """Nothing else is ready to run on `loop` (asyncio's own loops; others count as busy, see `_pump`)."""
    ready = getattr(loop, "_ready", None)
    return ready is not None and len(ready) == 0
