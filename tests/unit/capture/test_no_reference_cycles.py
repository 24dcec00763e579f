"""A recorded call leaves nothing for the cyclic garbage collector: what capture attaches to a client's objects
(a response's body tee, a cursor's row copy) must not point back at them, or every recorded call turns a
response or cursor into a cycle that lives until the next full collection (memory, and collector time that
was a fifth of a recorded requests call)."""

from __future__ import annotations

import gc
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import requests
import urllib3
from http_upstream import http_upstream

import fluxrun


@contextmanager
def cyclic_garbage() -> Iterator[list[object]]:
    """The objects only the cyclic collector could free, of what ran inside."""
    found: list[object] = []
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield found
        gc.collect()
        found.extend(gc.garbage)
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
        gc.enable()


@pytest.fixture(scope="module")
def upstream():
    with http_upstream() as server:
        yield server


def _requests_get(base: str, db: str) -> None:
    requests.get(f"{base}/price?x=1", timeout=5).json()


def _requests_stream(base: str, db: str) -> None:
    with requests.get(f"{base}/stream", stream=True, timeout=5) as response:
        list(response.iter_lines())


def _urllib3_unpreloaded(base: str, db: str) -> None:
    with urllib3.PoolManager() as pool:
        response = pool.request("GET", f"{base}/price?x=2", preload_content=False)
        response.read()
        response.release_conn()


def _sqlite_select(base: str, db: str) -> None:
    connection = sqlite3.connect(db)
    try:
        connection.execute("CREATE TABLE IF NOT EXISTS t (a)")
        connection.execute("SELECT a FROM t").fetchall()
    finally:
        connection.close()


def _requests_beside_a_thread(base: str, db: str) -> None:
    """An execution that has started a thread: each completed call notes which of its threads were busy."""
    idle = threading.Event()
    worker = threading.Thread(target=idle.wait, args=(5,))
    worker.start()
    try:
        requests.get(f"{base}/price?x=3", timeout=5).json()
    finally:
        idle.set()
        worker.join()


@pytest.mark.parametrize(
    "call", [_requests_get, _requests_stream, _urllib3_unpreloaded, _sqlite_select, _requests_beside_a_thread]
)
def test_a_recorded_call_leaves_no_reference_cycle(captured, upstream, tmp_path, call: Callable[[str, str], None]):
    db = str(tmp_path / "app.db")
    job = fluxrun.capture(name="cycles")(call)
    job(upstream.url, db)  # warm: modules, pools and caches made once are not what is measured
    with cyclic_garbage() as shut_down_garbage:
        call(upstream.url, db)
    with cyclic_garbage() as garbage:
        for _ in range(5):
            job(upstream.url, db)
    made = [type(o).__qualname__ for o in garbage]
    assert len(made) <= len(shut_down_garbage) * 5, f"capture left reference cycles behind: {sorted(set(made))}"


HELD_PER_FETCH = 10  # a GET holds 8 or 9 more than uncaptured (16 before): the entry, its site, 3 dicts, 2 header
# tuples and a list


def _session_get(base: str) -> Callable[[], None]:
    session = requests.Session()
    session.trust_env = False  # no proxy variables read per request: each read is an event of its own
    return lambda: session.get(f"{base}/price?x=1", timeout=5).json()


def _pool_get(base: str) -> Callable[[], None]:
    pool = urllib3.PoolManager()
    return lambda: pool.request("GET", f"{base}/price?x=2")


def _held_per_call(call: Callable[[], None], calls: int = 20) -> float:
    """Collector objects made and not freed per call (allocations minus deallocations), the collector off."""
    call()  # warm
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        for _ in range(calls):
            call()
        return (gc.get_count()[0] - before) / calls
    finally:
        gc.enable()


@pytest.mark.parametrize("client", [_session_get, _pool_get])
def test_a_recorded_fetch_holds_few_collector_objects_until_its_execution_ends(
    captured, upstream, client: Callable[[str], Callable[[], None]]
):
    """What a recorded call keeps until its execution ends is what makes the collector run during captured
    executions (and, for the survivors, its full collections over the whole heap): a header pair or a dict
    kept per call is a collection more every few dozen calls. Counted against the same calls uncaptured (the
    upstream's server thread runs in this process)."""
    get = client(upstream.url)
    uncaptured = _held_per_call(get)
    held = fluxrun.capture(name="held")(_held_per_call)(get) - uncaptured
    assert held <= HELD_PER_FETCH, f"{held:.1f} collector objects held per recorded call"
