"""Concurrency is replayed, not just matched.

The upstream answers with different delays (slept in the transport at capture; at replay the transport
never runs and nothing sleeps), so which call finished first is known only from the recording. Each
scenario is captured once and replayed 20 times: every replay must reproduce the recorded winner and
the recorded error, with the same event sequence.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

import httpx
import pytest

import fluxrun
from fluxrun.replay.scheduler import BUSY_GRACE, STALL_LIMIT

RUNS = 20

# name -> (delay in seconds at capture, status)
UPSTREAM = {
    "slow-fail": (0.30, 502),
    "fast-fail": (0.03, 503),
    "mid-ok": (0.15, 200),
    "late-fail": (0.12, 500),
    "a": (0.20, 200),
    "b": (0.04, 200),
    "c": (0.10, 200),
    "stuck": (5.0, 200),
}
SPIN = {0: 0, 1: 0, 2: 0}  # CPU work per pool job before its first call (loop iterations)
SKIP: set[str] = set()  # calls the code no longer makes (a fix)
BUSY_AFTER: dict[str, float] = {}  # seconds a pool job stays busy after its call, before it ends
ROOT_BUSY = [0.0]  # seconds the root stays busy between its submits and its wait


async def answer_async(request: httpx.Request) -> httpx.Response:
    name = request.url.path.strip("/")
    delay, status = UPSTREAM.get(name, (0.0, 200))
    await asyncio.sleep(delay)
    return httpx.Response(status, json={"name": name})


def answer_sync(request: httpx.Request) -> httpx.Response:
    name = request.url.path.strip("/").split("/")[-1]
    delay, status = UPSTREAM.get(name, (0.0, 200))
    time.sleep(delay)
    return httpx.Response(status, json={"name": name})


async def fetch(client: httpx.AsyncClient, name: str) -> str:
    response = await client.get(f"https://upstream.test/{name}")
    response.raise_for_status()
    return str(response.json()["name"])


def async_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(answer_async))


# -- the scenarios (each captured function raises, so it is kept) --------------------------------------
@fluxrun.capture
async def gather_in_flight() -> None:
    async with async_client() as client:
        await asyncio.gather(fetch(client, "slow-fail"), fetch(client, "fast-fail"), fetch(client, "mid-ok"))


@fluxrun.capture
async def task_group() -> None:
    async with async_client() as client:
        try:
            async with asyncio.TaskGroup() as group:
                for name in ("slow-fail", "late-fail", "fast-fail", "mid-ok"):
                    group.create_task(fetch(client, name))
        except* httpx.HTTPStatusError as errors:
            raise RuntimeError(sorted(str(e.request.url) for e in errors.exceptions)) from None


@fluxrun.capture
async def completed_in_order() -> None:
    async with async_client() as client:
        # tasks, not bare coroutines: Python 3.11's as_completed wraps those in set order (by object id)
        tasks = [asyncio.create_task(fetch(client, n)) for n in "abc"]
        order = [await next_done for next_done in asyncio.as_completed(tasks)]
    raise RuntimeError(f"as_completed order: {order}")


@fluxrun.capture
async def first_completed() -> None:
    async with async_client() as client:
        tasks = [asyncio.create_task(fetch(client, n)) for n in "abc"]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        winners = [t.result() for t in done]
    raise RuntimeError(f"first completed: {winners}, {len(pending)} cancelled")


@fluxrun.capture
async def wait_for_timeout() -> None:
    async with async_client() as client:
        fast = await fetch(client, "b")
        try:
            await asyncio.wait_for(fetch(client, "stuck"), timeout=0.1)
        except TimeoutError:
            raise RuntimeError(f"timed out after {fast}") from None


@fluxrun.capture
async def long_wait_for() -> None:
    async with async_client() as client:
        try:
            await asyncio.wait_for(fetch(client, "stuck"), timeout=2.5)  # a deadline as services set them
        except TimeoutError:
            raise RuntimeError("the upstream did not answer within its deadline") from None


@fluxrun.capture
async def timeout_block() -> None:
    async with async_client() as client:
        results = []
        try:
            async with asyncio.timeout(0.25):
                for name in ("b", "c", "a"):
                    results.append(await fetch(client, name))
        except TimeoutError:
            raise RuntimeError(f"timed out after {results}") from None


@fluxrun.capture
async def predecessor_skipped() -> None:
    async with async_client() as client:

        async def maybe(name: str) -> str:
            if name in SKIP:
                return "skipped"
            return await fetch(client, name)

        tasks = [asyncio.create_task(maybe(n)) for n in "abc"]
        done, _ = await asyncio.wait(tasks[1:], return_when=asyncio.ALL_COMPLETED)
        tasks[0].cancel()
    raise RuntimeError(f"done: {sorted(t.result() for t in done)}")


def pool_job(index: int) -> str:
    sum(range(SPIN[index]))  # CPU work before the first call: how long it takes differs between runs
    with httpx.Client(transport=httpx.MockTransport(answer_sync)) as client:
        response = client.get(f"https://upstream.test/item/{index}/{'abc'[index]}")
    return f"{index}:{response.json()['name']}"


@fluxrun.capture
def pool_map() -> None:
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(pool_job, range(3)))
    raise RuntimeError(f"map: {results}")


def pool_fetch(name: str) -> str:
    with httpx.Client(transport=httpx.MockTransport(answer_sync)) as client:
        response = client.get(f"https://upstream.test/{name}")
    response.raise_for_status()
    return str(response.json()["name"])


@fluxrun.capture
def pool_as_completed() -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(pool_fetch, name) for name in ("a", "late-fail", "b", "slow-fail")]
        order = []
        for future in as_completed(futures):
            order.append(future.result())  # raises the first failure, in completion order


def pool_fetch_then_busy(name: str) -> str:
    try:
        return pool_fetch(name)
    finally:
        if name in BUSY_AFTER:
            block_in_c(BUSY_AFTER[name])


@fluxrun.capture
def pool_first_failure() -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(pool_fetch_then_busy, name) for name in ("fast-fail", "late-fail")]
        for future in as_completed(futures):
            future.result()  # raises the first failure, in completion order


def block_in_c(seconds: float) -> None:
    """Busy where FluxRun cannot see the thread parked: as a thread the CPU starves looks."""
    lock = threading.Lock()
    lock.acquire()
    lock.acquire(timeout=seconds)


@fluxrun.capture
def pool_root_busy_before_waiting() -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(pool_fetch, name) for name in ("b", "c")]
        block_in_c(ROOT_BUSY[0])
        done = [future.done() for future in futures]
        for future in as_completed(futures):
            future.result()
    raise RuntimeError(f"done before waiting: {done}")


@fluxrun.capture
def pool_left_running() -> None:
    pool = ThreadPoolExecutor(max_workers=2)
    futures = [pool.submit(pool_fetch, "b"), pool.submit(pool_fetch, "stuck")]
    finished = []
    try:
        for future in as_completed(futures, timeout=0.5):
            finished.append(future.result())
    except TimeoutError:
        raise RuntimeError(f"gave up waiting; finished: {finished}") from None
    finally:
        pool.shutdown(wait=False)


def slow_report(path: str) -> str:
    """A query that takes 0.3 s at capture (a report): it finished after the HTTP call started beside it."""
    conn = sqlite3.connect(path)
    try:
        conn.create_function("slowly", 1, lambda x: time.sleep(0.3) or x)
        return f"report {conn.execute('SELECT slowly(count(*)) FROM sqlite_master').fetchone()[0]}"
    finally:
        conn.close()


@fluxrun.capture
def query_races_fetch(path: str) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(slow_report, path), pool.submit(pool_fetch, "b")]
        order = [future.result() for future in as_completed(futures)]
    raise RuntimeError(f"first came {order[0]}")


@pytest.fixture(autouse=True)
def reset():
    SPIN.update({0: 0, 1: 0, 2: 0})
    SKIP.clear()
    BUSY_AFTER.clear()
    ROOT_BUSY[0] = 0.0


def capture(captured, scenario, expected_error: type[BaseException], match: str | None = None):
    with pytest.raises(expected_error, match=match) as raised:
        if asyncio.iscoroutinefunction(scenario):
            asyncio.run(scenario())
        else:
            scenario()
    (payload,) = captured.payloads()
    fluxrun.shutdown()
    return payload, raised.value


def replay_20_times(payload, message: str):
    results = [fluxrun.replay.run(payload, isolate=False, app=None) for _ in range(RUNS)]
    for result in results:
        assert result.outcome == "reproduced", result.summary()
        assert result.new.message == message
    assert all(r.events == results[0].events for r in results)
    assert all(r.new == results[0].new for r in results)
    return results[0]


# -- asyncio ---------------------------------------------------------------------------------------------
def test_gather_with_calls_in_flight_when_one_fails(captured):
    payload, error = capture(captured, gather_in_flight, httpx.HTTPStatusError, "fast-fail")
    http = [e for e in payload["events"] if e["kind"] == "http"]
    assert len(http) == 3
    result = replay_20_times(payload, str(error))
    assert result.new.error_type == "httpx:HTTPStatusError"


def test_task_group_cancels_the_others_on_the_recorded_error(captured):
    payload, error = capture(captured, task_group, RuntimeError, "fast-fail")
    assert "late-fail" not in str(error) and "slow-fail" not in str(error)
    replay_20_times(payload, str(error))


def test_as_completed_yields_in_the_recorded_order(captured):
    payload, error = capture(captured, completed_in_order, RuntimeError, r"\['b', 'c', 'a'\]")
    replay_20_times(payload, str(error))


def test_wait_first_completed_has_the_recorded_winner(captured):
    payload, error = capture(captured, first_completed, RuntimeError, r"\['b'\], 2 cancelled")
    replay_20_times(payload, str(error))


def test_wait_for_times_out_on_the_call_that_was_still_pending(captured):
    payload, error = capture(captured, wait_for_timeout, RuntimeError, "timed out after b")
    replay_20_times(payload, str(error))


def test_a_deadline_on_a_call_that_never_answered_passes_at_once_at_replay(captured):
    """The loop has nothing left to run but the deadline's timer: its clock is moved on to it, as the recorded
    call's answer never comes, so a replay does not wait out a real 2.5 s (time-machine's `tick` for the loop)."""
    payload, error = capture(captured, long_wait_for, RuntimeError, "within its deadline")
    started = time.monotonic()
    result = fluxrun.replay.run(payload, isolate=False)
    assert time.monotonic() - started < 1.5  # not the 2.5 s the deadline took at capture
    assert result.outcome == "reproduced", result.summary()
    assert result.new.message == str(error)


def test_asyncio_timeout_ends_where_it_ended(captured):
    payload, error = capture(captured, timeout_block, RuntimeError, r"timed out after \['b', 'c'\]")
    replay_20_times(payload, str(error))


def test_a_held_answer_whose_predecessor_is_never_requested_is_released(captured):
    payload, _ = capture(captured, predecessor_skipped, RuntimeError, r"done: \['b', 'c'\]")
    SKIP.add("b")  # the replayed code no longer makes the call that finished first
    started = time.monotonic()
    result = fluxrun.replay.run(payload, isolate=False)
    assert time.monotonic() - started < 3.0  # the held answer of "c" was released, not waited for forever
    assert result.new.message == "done: ['c', 'skipped']"


# -- threads ---------------------------------------------------------------------------------------------
def test_pool_map_with_cpu_work_before_the_first_call(captured):
    SPIN.update({0: 3_000_000, 1: 1_500_000, 2: 0})  # at capture job 2 makes the first call
    payload, error = capture(captured, pool_map, RuntimeError, "map:")
    tasks = {e["data"]["request"]["url"]: e["task"] for e in payload["events"] if e["kind"] == "http"}
    assert sorted(tasks.values()) == ["0.1", "0.2", "0.3"]
    assert tasks["https://upstream.test/item/0/a"] == "0.1"  # numbered in submission order
    SPIN.update({0: 0, 1: 1_500_000, 2: 3_000_000})  # at replay job 0 does: the numbering must not change
    replay_20_times(payload, str(error))


def test_pool_as_completed_raises_the_recorded_first_failure(captured):
    payload, error = capture(captured, pool_as_completed, httpx.HTTPStatusError, "late-fail")
    replay_20_times(payload, str(error))


def replay_3_times(payload, message: str) -> None:
    for _ in range(3):
        result = fluxrun.replay.run(payload, isolate=False, app=None)
        assert result.outcome == "reproduced", result.summary()
        assert result.new.message == message


def test_a_job_paused_after_its_answer_still_ends_before_the_next_answer(captured):
    """At capture "fast-fail"'s job ended before "late-fail"'s answer came; at replay it stays busy after its
    answer for longer than BUSY_GRACE (a starved CPU), and the next answer waits for its end (a wait bounded by
    STALL_LIMIT of quiet, which the busy time stays well inside: a late start of the busy time lengthens it)."""
    payload, error = capture(captured, pool_first_failure, httpx.HTTPStatusError, "fast-fail")
    assert sorted(payload["task_ends"]) == ["0.1", "0.2"]
    BUSY_AFTER["fast-fail"] = BUSY_GRACE + 0.3
    assert BUSY_AFTER["fast-fail"] < STALL_LIMIT - 0.5
    replay_3_times(payload, str(error))


def test_a_job_still_busy_when_the_next_answer_came_lets_it_go(captured):
    """At capture "fast-fail"'s job was still busy after its answer when "late-fail"'s came and failed first."""
    BUSY_AFTER["fast-fail"] = 0.3
    payload, error = capture(captured, pool_first_failure, httpx.HTTPStatusError, "late-fail")
    replay_3_times(payload, str(error))


def test_a_root_starved_before_its_wait_still_sees_the_answers_come_after_it_parked(captured):
    """At capture the root was waiting in `as_completed` when both answers came; at replay it stays busy after
    its submits for longer than twice BUSY_GRACE (a starved CPU), and the answers wait until it parks."""
    payload, error = capture(captured, pool_root_busy_before_waiting, RuntimeError, r"\[False, False\]")
    http = [e["data"] for e in payload["events"] if e["kind"] == "http"]
    done = {data["request"]["url"].rsplit("/", 1)[1]: str(data["done"]) for data in http}
    states = payload["task_states"]
    assert states[done["b"]] == {"busy": ["0.2"], "parked": ["0"]}  # 0.2 was in its own call
    assert states[done["c"]] == {"busy": [], "parked": ["0"]}  # 0.1 had returned
    ROOT_BUSY[0] = 2 * BUSY_GRACE + 0.5
    for _ in range(2):
        result = fluxrun.replay.run(payload, isolate=False, app=None)
        assert result.outcome == "reproduced", result.summary()
        assert result.new.message == str(error)


def test_a_pool_job_left_running_stays_pending_and_never_reaches_the_app(captured):
    payload, error = capture(captured, pool_left_running, RuntimeError, r"finished: \['b'\]")
    results = [fluxrun.replay.run(payload, isolate=False) for _ in range(3)]
    for result in results:
        assert result.outcome == "reproduced", result.summary()
        assert result.new.message == str(error)


def test_no_internal_error_reaches_the_app_for_a_call_with_no_answer(captured):
    payload, _ = capture(captured, gather_in_flight, httpx.HTTPStatusError, "fast-fail")
    for event in payload["events"]:
        if event["kind"] == "http":
            event["data"].pop("response", None)
            event.pop("error", None)
            event["data"]["done"] = 1  # claims to have finished, yet has no answer
    with pytest.raises(fluxrun.ReplayDivergence, match="cannot be answered"):
        fluxrun.replay.run(payload, isolate=False)


def test_lineage_is_given_at_creation_not_at_first_io(captured):
    @fluxrun.capture
    async def job():
        async def quiet():  # makes no IO at all
            return None

        async def loud(name):
            for _ in range(3):
                await asyncio.sleep(0)
            time.time()

        first = asyncio.create_task(loud("first"))
        second = asyncio.create_task(quiet())
        third = asyncio.create_task(loud("third"))

        def in_thread():
            time.monotonic()

        thread = threading.Thread(target=in_thread)
        await asyncio.gather(first, second, third)
        thread.start()
        thread.join()
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        asyncio.run(job())
    events = [(e["call"], e["task"]) for e in captured.events() if e["kind"] == "time"]
    assert events == [("time.time", "0.1"), ("time.time", "0.3"), ("time.monotonic", "0.4")]


def test_hostile_thread_states_in_a_bundle_are_left_out():
    """`task_states` is untrusted data: keys that are not plain numbers, and values of the wrong shape, are
    ignored rather than raised from deep inside the scheduler."""
    from fluxrun.replay.scheduler import ReplayScheduler

    states = {"²": {"busy": [], "parked": ["0"]}, "3": {"busy": ["0.1", 5], "parked": ["0"]}, "x": 1, "4": "no"}
    scheduler = ReplayScheduler([], None, {**states, "9" * 40: {"busy": [], "parked": []}})
    assert scheduler._states == {3: (frozenset({"0.1"}), frozenset({"0"}))}


def test_a_query_in_one_thread_and_a_fetch_in_another_complete_in_the_recorded_order(captured, tmp_path):
    """Database answers carry their completion number like fetches: the query that came back last at capture
    comes back last at replay, though nothing is slow there."""
    path = str(tmp_path / "reports.db")
    sqlite3.connect(path).close()
    payload, error = capture(captured, lambda: query_races_fetch(path), RuntimeError, "first came b")
    for _ in range(5):
        result = fluxrun.replay.run(payload, isolate=False, app=query_races_fetch)
        assert result.outcome == "reproduced", result.summary()
        assert result.new.message == str(error)
