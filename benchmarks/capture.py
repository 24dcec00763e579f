"""FluxRun capture overhead: what the SDK costs an app, measured against baselines taken in the same run.

Sections (every "added" number is the FluxRun run minus a baseline measured in this run):

1. Idle cost per intercepted call: `fluxrun.init()` done, no execution active. Each IO kind (time.time,
   time.perf_counter, datetime.now, random.random, uuid.uuid4, env reads, logging, httpx sync and async
   through `httpx.MockTransport`, a `@fluxrun.boundary` function) runs in a timeit-style loop with FluxRun
   shut down (the baseline: unpatched functions, or an undecorated function for the boundary), then with
   `init` done; each repeat does both, one after the other, so both see the same load on a shared
   machine. Loops are timed in the thread's CPU time (another process preempting them does not count).
   Median of repeats, ns/call added. `datetime.now` is called through this module's own
   `from datetime import datetime`, which FluxRun rebinds because this file counts as the app's code.
2. Cost per call while capturing: the same loops inside a `@fluxrun.capture`d function (at most
   CALLS_PER_EXECUTION calls each) that returns normally, so each recording is built and then discarded
   (sample_rate 0), timed in alternation with the same loops uncaptured. µs/call added over the baseline
   of section 1 (section 1's idle added plus the captured-minus-uncaptured difference). A probe execution
   per kind that raises is sealed and opened to check how many events each call really records.
3. Per-request overhead on a FastAPI app whose handler does 10 IO events (3 env reads, 2 time.time,
   uuid4, random.random, one handled logging.info, one @boundary call, one async httpx GET through
   MockTransport). Requests are driven in-process by calling the ASGI app with a synthetic http scope,
   receive and send (no sockets), one at a time; latency p50/p99 after warm-up. Each configuration
   runs in its own subprocess (the SDKs patch globally; the script re-invokes itself with `--config`),
   sequentially, in interleaved rounds whose samples are pooled (an "added" figure is the median over rounds
   of the difference within a round, since a shared machine's load drifts between rounds):
   (a) plain app, (b) FluxRun middleware, (c) sentry-sdk (traces_sample_rate=0.0, no-op transport),
   (d) sentry-sdk with traces_sample_rate=1.0, (e) OpenTelemetry FastAPI + HTTPX instrumentation with an
   SDK TracerProvider and an in-memory exporter (cleared between batches, untimed), and (f) FluxRun with
   the handler raising, so every request is kept and sealed in the background, against a plain app whose
   handler raises the same way, and (g) the same with shipping on and the server down: `FLUXRUN_DSN`
   points at a closed loopback port, so every bundle is sealed, its sends are refused, and it is
   spooled, all on FluxRun's background threads while the requests are timed (against (f)'s baseline,
   the plain app whose handler raises). Only FluxRun configurations decorate the boundary function.
   With `--baseline REV` (an A/B against another revision, such as the code a change started from), the
   parent checks REV out into the temporary folder (`git archive REV | tar -x`) and runs (b') "FluxRun
   middleware at REV" right after (b) in every round: the same child code, in a subprocess whose
   PYTHONPATH puts the checkout's `src` first, so it imports REV's FluxRun (the child reports the file it
   imported and the parent checks it). The child uses only `fluxrun.init`, `FluxRunMiddleware`, `boundary`,
   `flush`, `shutdown` and `fluxrun.bundle`'s key and open functions, which REV must have. The table shows
   both rows and the ratio of their added p50s (target: within 10%, this tree <= 1.10x REV's). (b) and
   (b') swap places every other round; every child runs with PYTHONHASHSEED=0. Each subprocess runs at its
   own speed on a shared machine, so an A/B wants many rounds: `--rounds N` (N rounds of the same size) and
   `--ab-only` (only (a), (b) and (b')).
4. Seal and open time (`fluxrun.bundle.Sealer.seal` / `open_bundle`) for payloads of 4 KiB, 16 KiB and
   1 MiB (orjson length), shaped like a real payload: http events with JSON bodies, env/time/log events.

5. The database client: `SELECT 1` and its first row through sqlite3, psycopg 3, psycopg2 and SQLAlchemy
   Core on psycopg (on a throwaway PostgreSQL from tests/support/postgres.py; without PostgreSQL's binaries
   the PostgreSQL rows are left out and SQLAlchemy runs on sqlite3), measured like sections 1 and 2:
   baseline with FluxRun shut down, idle after `init` (sqlite3 and psycopg2: a connection opened while
   FluxRun is installed, which is FluxRun's subclass of the driver's C type, against one opened while it is
   not), and captured.
   Beside them, in the same run and with FluxRun shut down, OpenTelemetry's SQLAlchemy instrumentation on
   its own engine (an SDK TracerProvider, an in-memory exporter cleared between repeats, untimed): ns/call
   added over the same baseline, in alternation with it.

6. HTTP and Redis clients, measured like section 5: `requests` Session.get and a `urllib3` pool's request
   on urllib3's own pool with only `_make_request` stubbed (a canned 200, no socket), aiohttp's
   ClientSession.get through a TCPConnector whose connections are aiohttp's own protocol on an in-memory
   transport answering a canned 200, and redis-py GET against a throwaway `redis-server` on a free loopback
   port (tests/support/redis_server.py; the row is left out without the binary), and the same GET through
   redis-py's `RedisCluster` against a throwaway one-node cluster (`redis_cluster()` there). Beside them, in
   the same run with FluxRun shut down, OpenTelemetry's requests, aiohttp-client and redis instrumentations
   (SDK TracerProvider, in-memory exporter), switched on around their loop and off after, against the same
   client uninstrumented in the same repeat.

7. `--instructions`: instructions per request and per call, which repeat from run to run where timings
   on a shared machine move by tens of percent. Section 3's request loop (the plain app and the FluxRun
   app, and with `--baseline REV` REV's FluxRun app) and sections 5 and 6's calls (baseline with FluxRun
   shut down, idle after init, captured inside one `fluxrun.capture`d execution per loop) each run in a
   child under `valgrind --tool=callgrind` (Debian's valgrind), counted only inside `sys.call_tracing`,
   which the child wraps around each measured loop (`--toggle-collect` and `--dump-after` on its C
   function), so each loop is one dump. Each loop is counted at two lengths and the difference divided by
   the difference in length, so fixed costs cancel; PYTHONHASHSEED=0. Printed beside the timings of the
   sections run; `--instructions-only` skips the timings.

A final table lists each target, the measured value and pass/fail.

Run (with the project installed: `pip install -e '.[test,bench]'`):

    python benchmarks/capture.py                 # full run, about 2 minutes on 2 cores
    python benchmarks/capture.py --quick         # smoke run, a few seconds, noisy numbers
    python benchmarks/capture.py --json out.json # also write the results as JSON
    python benchmarks/capture.py --only-db --only-clients   # sections 5 and 6 (any --only-* combine)
    python benchmarks/capture.py --only-db --only-clients --processes 5  # their medians over 5 processes
    python benchmarks/capture.py --only-asgi --baseline d65e306  # section 3 with an A/B against d65e306
    python benchmarks/capture.py --only-asgi --baseline d65e306 --ab-only --rounds 30  # a steadier A/B
    python benchmarks/capture.py --only-asgi --only-clients --instructions  # timings and callgrind counts
    python benchmarks/capture.py --instructions --instructions-only --baseline d65e306  # counts only, with REV's

Keys and bundles live in a temporary directory that is removed at the end. The exit status is 0 even
when a target is missed: this is a measurement, not a gate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import platform
import random
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import types
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime  # noqa: F401 - used by the measured statements; FluxRun rebinds it (app code)
from pathlib import Path
from typing import Any

import httpx
import orjson
from harness import percentile, targets_table, verdict
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import fluxrun
from fluxrun.bundle import Sealer, generate_keys, load_capture_key, load_replay_key, open_bundle

# The real clock, held in a namespace on purpose: `fluxrun.init` rebinds top-level names of app modules
# that are patched functions (`from time import perf_counter_ns`), and the timing must not go through them.
REAL = types.SimpleNamespace(clock_ns=time.perf_counter_ns, cpu_ns=time.thread_time_ns)


def now_ns() -> int:
    return REAL.clock_ns()


# ------------------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    repeats: int  # repeats per measurement; the median is reported
    loop_budget_ms: float  # target duration of one repeat
    asgi_requests: int  # measured requests per configuration, over all rounds
    asgi_rounds: int  # interleaved rounds (plain, fluxrun, sentry, ... then again)
    asgi_warmup: int  # requests before measuring, per subprocess
    seal_iterations: tuple[int, int, int]  # for 4 KiB, 16 KiB, 1 MiB


FULL = Settings(
    repeats=7, loop_budget_ms=40, asgi_requests=3000, asgi_rounds=6, asgi_warmup=300, seal_iterations=(400, 300, 20)
)
QUICK = Settings(
    repeats=3, loop_budget_ms=3, asgi_requests=200, asgi_rounds=1, asgi_warmup=40, seal_iterations=(30, 30, 3)
)


def is_quick(settings: Settings) -> bool:
    """`--quick` (also when `--rounds` changed its ASGI rounds)."""
    return settings.loop_budget_ms == QUICK.loop_budget_ms


CALLS_PER_EXECUTION = 256  # section 2: calls recorded by one captured execution before it returns
PROBE_CALLS = 4  # section 2: calls made by the probe execution that is kept and opened
IDLE_TARGET_NS = 300
CAPTURE_HTTP_TARGET_US = 15
ASGI_P50_TARGET_US = 25
ASGI_P99_TARGET_US = 100
SHIP_DOWN_P99_TARGET_US = 1000  # (g): request-path cost with shipping on and the server unreachable
SEAL_16K_TARGET_US = 100


# ------------------------------------------------------------------------------------------------------
# The "app": what the measured calls and the FastAPI handler use
# ------------------------------------------------------------------------------------------------------

BENCH_ENV = {"BENCH_REGION": "eu-west-1", "BENCH_TIER": "gold", "BENCH_FLAG": "on"}
os.environ.update(BENCH_ENV)

INVENTORY_URL = "http://inventory.local/sku/42"


class DiscardHandler(logging.Handler):
    """A handler that formats each record, as a real one would, and drops it."""

    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)


bench_log = logging.getLogger("bench.app")
bench_log.setLevel(logging.INFO)
bench_log.propagate = False
bench_log.addHandler(DiscardHandler())


def inventory(request: httpx.Request) -> httpx.Response:
    """The MockTransport handler standing in for a remote service."""
    return httpx.Response(200, json={"sku": 42, "stock": 7, "warehouse": "ams-2"})


http_client = httpx.Client(transport=httpx.MockTransport(inventory))
async_client = httpx.AsyncClient(transport=httpx.MockTransport(inventory))


def charge_plain(amount: int) -> dict[str, Any]:
    """A host call (payment provider); `charge` is the same function declared as a FluxRun boundary."""
    return {"charged": amount, "currency": "EUR", "status": "captured"}


charge = fluxrun.boundary("payments.charge")(charge_plain)


# ------------------------------------------------------------------------------------------------------
# Sections 1 and 2: per-call cost, idle and capturing
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    name: str
    stmt: str  # one call as app code writes it (awaited when is_async)
    group: str  # time, random, env, log, http, host: the idle target applies to time, random and env
    is_async: bool = False
    baseline_stmt: str | None = None  # the call without FluxRun, when it is not the same statement


KINDS = (
    Kind("time.time", "time.time()", "time"),
    Kind("time.perf_counter", "time.perf_counter()", "time"),
    Kind("datetime.now", "datetime.now()", "time"),
    Kind("random.random", "random.random()", "random"),
    Kind("uuid.uuid4", "uuid.uuid4()", "random"),
    Kind("os.environ[key]", "os.environ['BENCH_REGION']", "env"),
    Kind("os.environ.get", "os.environ.get('BENCH_REGION')", "env"),
    Kind("os.getenv", "os.getenv('BENCH_REGION')", "env"),
    Kind("logger.debug (below level)", "bench_log.debug('order %s', 42)", "log"),
    Kind("logger.info (handled)", "bench_log.info('order %s', 42)", "log"),
    Kind("httpx Client.get (mock)", "http_client.get(INVENTORY_URL)", "http"),
    Kind("httpx AsyncClient.get (mock)", "async_client.get(INVENTORY_URL)", "http", is_async=True),
    Kind("@boundary call", "charge(42)", "host", baseline_stmt="charge_plain(42)"),
)
IDLE_TARGET_GROUPS = ("time", "random", "env")

_event_loop: asyncio.AbstractEventLoop | None = None


def event_loop() -> asyncio.AbstractEventLoop:
    global _event_loop
    if _event_loop is None:
        _event_loop = asyncio.new_event_loop()
    return _event_loop


def compile_loop(stmt: str, is_async: bool) -> Callable[[int], Any]:
    """A timeit-style `for _ in range(n): stmt`, compiled as this module's code so FluxRun sees an app frame."""
    prefix, wait = ("async ", "await ") if is_async else ("", "")
    source = f"{prefix}def bench_loop(n):\n    for _ in range(n):\n        {wait}{stmt}\n"
    namespace: dict[str, Any] = {}
    exec(compile(source, __file__, "exec"), globals(), namespace)
    return namespace["bench_loop"]  # type: ignore[no-any-return]


def timed_run(function: Callable[[int], Any], is_async: bool, n: int) -> int:
    """Call `function(n)` once (to completion on the event loop when async); elapsed ns of this thread's
    CPU time, so that another process preempting the loop on a shared machine does not count."""
    cpu_ns = REAL.cpu_ns
    if is_async:
        loop = event_loop()
        started = cpu_ns()
        loop.run_until_complete(function(n))
        return int(cpu_ns() - started)
    started = cpu_ns()
    function(n)
    return int(cpu_ns() - started)


def calibrate(run: Callable[[int], int], budget_ns: float) -> int:
    """How many iterations make one run last about `budget_ns`."""
    n = 1
    while True:
        elapsed = run(n)
        if elapsed >= budget_ns / 8 or n >= 1 << 24:
            return max(1, int(n * budget_ns / max(elapsed, 1)))
        n *= 4


def median_ns_per_call(run: Callable[[int], int], n: int, repeats: int) -> float:
    run(n)  # one untimed repeat: warm caches, allocator and CPU clock
    gc.collect()
    return statistics.median(run(n) / n for _ in range(repeats))


def measure_baseline_and_idle(
    settings: Settings,
    start: Callable[[], None],
    stop: Callable[[], None],
    kinds: tuple[Kind, ...] = KINDS,
    paired: bool = False,
) -> tuple[dict[str, float], dict[str, float]]:
    """ns/call of each kind before `fluxrun.init` (baseline) and after it (idle), in alternation: every
    repeat times all baselines with FluxRun shut down, then all idle loops with it started again, so both
    see the same machine. Returns with FluxRun started."""
    runs: dict[str, tuple[Callable[[int], int], Callable[[int], int]]] = {}
    for kind in kinds:
        plain = compile_loop(kind.baseline_stmt or kind.stmt, kind.is_async)
        patched = compile_loop(kind.stmt, kind.is_async)
        runs[kind.name] = (
            lambda n, loop=plain, is_async=kind.is_async: timed_run(loop, is_async, n),
            lambda n, loop=patched, is_async=kind.is_async: timed_run(loop, is_async, n),
        )
    counts = {}
    for name, (run_plain, _) in runs.items():
        run_plain(1)
        counts[name] = calibrate(run_plain, settings.loop_budget_ms * 1e6)
    samples: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in runs}
    for repeat in range(settings.repeats + 1):  # the first repeat warms up and is not counted
        gc.collect()
        for name, (run_plain, _) in runs.items():
            run_plain(1)  # as the idle loop below: one untimed call right before, so both start warm
            if repeat:
                samples[name][0].append(run_plain(counts[name]) / counts[name])
        start()
        gc.collect()
        for name, (_, run_patched) in runs.items():
            run_patched(1)  # FluxRun's per-code-object caches
            if repeat:
                samples[name][1].append(run_patched(counts[name]) / counts[name])
        if repeat < settings.repeats:
            stop()
    baseline = {name: statistics.median(values[0]) for name, values in samples.items()}
    if paired:  # idle = baseline + the median of each repeat's own difference (drift between repeats cancels)
        idle = {
            name: baseline[name] + statistics.median(i - b for b, i in zip(*values, strict=True))
            for name, values in samples.items()
        }
    else:
        idle = {name: statistics.median(values[1]) for name, values in samples.items()}
    return baseline, idle


class CollectorTime:
    """CPU time spent in the cyclic garbage collector while `on` (a `gc.callbacks` hook). The captured figures are
    medians of repeats, which leave out the few repeats that hold a full collection (its cost grows with the heap);
    this is the collector's mean share per captured call, for the tables to show beside them."""

    def __init__(self) -> None:
        self.ns = 0
        self.on = False
        self._started = 0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if not self.on:
            return
        if phase == "start":
            self._started = REAL.cpu_ns()
        else:
            self.ns += REAL.cpu_ns() - self._started


def measure_capturing(
    settings: Settings,
    idle: dict[str, float],
    kinds: tuple[Kind, ...] = KINDS,
    collector: dict[str, float] | None = None,
) -> dict[str, float]:
    """ns/call of each kind inside captured executions of CALLS_PER_EXECUTION calls that end normally.

    Each repeat times the captured executions and, right after, the same calls uncaptured (idle), so both
    see the same machine; the result is table 1's idle figure plus the difference measured side by side.
    `collector`, when given, gets each kind's mean collector time per captured call (`CollectorTime`).
    """
    results = {}
    for kind in kinds:
        captured = fluxrun.capture(name=f"bench {kind.name}")(compile_loop(kind.stmt, kind.is_async))
        uncaptured = compile_loop(kind.stmt, kind.is_async)

        def run(executions: int, function: Any = captured, is_async: bool = kind.is_async) -> int:
            total = 0
            for _ in range(executions):
                total += timed_run(function, is_async, CALLS_PER_EXECUTION)
            return total

        run(1)
        run(1, uncaptured)
        executions = calibrate(run, settings.loop_budget_ms * 1e6)
        gc.collect()
        differences = []
        clock = CollectorTime()
        gc.callbacks.append(clock)
        try:
            for _ in range(settings.repeats):
                clock.on = True
                captured_ns = run(executions)
                clock.on = False
                differences.append(captured_ns - run(executions, uncaptured))
        finally:
            gc.callbacks.remove(clock)
        added = statistics.median(differences) / executions / CALLS_PER_EXECUTION
        results[kind.name] = idle[kind.name] + added
        if collector is not None:
            collector[kind.name] = clock.ns / (settings.repeats * executions * CALLS_PER_EXECUTION)
    return results


class ProbeDone(Exception):
    """Raised by a probe execution so that FluxRun keeps (and seals) it."""


def run_probe(kind: Kind) -> None:
    """One captured execution making PROBE_CALLS calls of `kind`, then raising so that it is kept."""
    loop = compile_loop(kind.stmt, kind.is_async)

    @fluxrun.capture
    def probe() -> None:
        loop(PROBE_CALLS)
        raise ProbeDone

    @fluxrun.capture
    async def probe_async() -> None:
        await loop(PROBE_CALLS)
        raise ProbeDone

    try:
        if kind.is_async:
            event_loop().run_until_complete(probe_async())
        else:
            probe()
    except ProbeDone:
        pass


def probe_events_per_call(bundles: Path, replay_key: Path, kinds: tuple[Kind, ...] = KINDS) -> dict[str, float]:
    """Events one call of each kind records, read back from a sealed probe bundle (NaN if none was written)."""
    key = load_replay_key(replay_key)
    results = {}
    for kind in kinds:
        before = set(bundles.glob("*.fluxrun"))
        run_probe(kind)
        fluxrun.flush(timeout=10)
        new = sorted(set(bundles.glob("*.fluxrun")) - before)
        if len(new) != 1:
            results[kind.name] = math.nan
            continue
        events = open_bundle(new[0].read_bytes(), key).payload["events"]
        results[kind.name] = len(events) / PROBE_CALLS
    return results


# ------------------------------------------------------------------------------------------------------
# Section 3: ASGI request overhead, one subprocess per configuration
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AsgiConfig:
    name: str
    label: str
    sdk: str  # none, fluxrun, sentry, sentry_traces, otel
    baseline: str | None  # the configuration its added latency is measured against
    fail: bool = False


ASGI_CONFIGS = (
    AsgiConfig("plain", "(a) plain FastAPI, no SDK", "none", None),
    AsgiConfig("fluxrun", "(b) FluxRun middleware", "fluxrun", "plain"),
    AsgiConfig("sentry", "(c) sentry-sdk, traces_sample_rate=0.0", "sentry", "plain"),
    AsgiConfig("sentry_traces", "(d) sentry-sdk, traces_sample_rate=1.0", "sentry_traces", "plain"),
    AsgiConfig("otel", "(e) OpenTelemetry FastAPI + HTTPX", "otel", "plain"),
    AsgiConfig("plain_fail", "plain FastAPI, handler raises (500)", "none", None, fail=True),
    AsgiConfig("fluxrun_fail", "(f) FluxRun, handler raises: kept + sealed", "fluxrun", "plain_fail", fail=True),
    AsgiConfig(
        "fluxrun_ship_down",
        "(g) FluxRun + DSN, server down: kept, sealed, spooled",
        "fluxrun_ship_down",
        "plain_fail",
        fail=True,
    ),
)
# (b) again, importing the FluxRun of `--baseline REV` (a checkout of REV on PYTHONPATH): only in an A/B run
BASELINE_CONFIG = AsgiConfig("fluxrun_baseline", "(b') FluxRun middleware at --baseline", "fluxrun", "plain")
CONFIG_BY_NAME = {config.name: config for config in (*ASGI_CONFIGS, BASELINE_CONFIG)}
AB_RATIO_TARGET = 1.10  # issue 14: the ASGI added p50 stays within 10% of the same-run figure of the baseline
EVENTS_PER_REQUEST = "3 env reads, 2 time.time, 1 uuid4, 1 random.random, 1 logging.info, 1 @boundary, 1 httpx GET"

HTTP_SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/orders/42",
    "raw_path": b"/orders/42",
    "query_string": b"",
    "root_path": "",
    "headers": [(b"host", b"shop.local"), (b"user-agent", b"fluxrun-bench"), (b"accept", b"application/json")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
}


def build_app(charge_fn: Callable[[int], Any], fail: bool) -> tuple[Any, httpx.AsyncClient]:
    """The FastAPI app under test and the AsyncClient its handler uses (10 IO events per request)."""
    from fastapi import FastAPI

    app = FastAPI()
    client = httpx.AsyncClient(transport=httpx.MockTransport(inventory), base_url="http://inventory.local")

    @app.get("/orders/{order_id}")
    async def get_order(order_id: int) -> dict[str, Any]:
        region = os.environ["BENCH_REGION"]
        tier = os.environ.get("BENCH_TIER", "free")
        flag = os.getenv("BENCH_FLAG")
        started = time.time()
        order_ref = uuid.uuid4().hex
        jitter = random.random()
        bench_log.info("order %s for %s", order_id, region)
        stock = (await client.get(f"/sku/{order_id}")).json()
        receipt = charge_fn(order_id)
        elapsed = time.time() - started
        if fail:
            raise RuntimeError("payment provider declined the charge")
        return {
            "ref": order_ref,
            "tier": tier,
            "flag": flag,
            "jitter": jitter,
            "stock": stock,
            "receipt": receipt,
            "elapsed": elapsed,
        }

    return app, client


# Each setup installs one SDK, builds the app, and returns (app, on_batch, finish): `on_batch` runs
# untimed every BATCH requests, `finish` runs after measuring and returns notes for the report.
Setup = tuple[Any, Callable[[], None], Callable[[], dict[str, Any]]]
BATCH = 250


def setup_none(config: AsgiConfig, args: argparse.Namespace) -> Setup:
    app, _ = build_app(charge_plain, config.fail)
    return app, lambda: None, dict


def setup_fluxrun(config: AsgiConfig, args: argparse.Namespace) -> Setup:
    bundles = Path(args.workdir) / f"bundles-{config.name}-{args.round}"
    fluxrun.init(directory=bundles, capture_key=args.capture_key, sample_rate=0.0)
    app, _ = build_app(charge, config.fail)
    app.add_middleware(fluxrun.FluxRunMiddleware)

    def finish() -> dict[str, Any]:
        fluxrun.flush(timeout=120)
        fluxrun.shutdown()
        files = sorted(bundles.glob("*.fluxrun"))
        notes: dict[str, Any] = {"bundles": len(files)}
        if files:
            payload = open_bundle(files[-1].read_bytes(), load_replay_key(args.replay_key)).payload
            notes["events_by_kind"] = dict(Counter(event["kind"] for event in payload["events"]))
        return notes

    return app, lambda: None, finish


def closed_loopback_port() -> int:
    """A loopback port nothing listens on: bound once by the OS, then released, so a connect is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def setup_fluxrun_ship_down(config: AsgiConfig, args: argparse.Namespace) -> Setup:
    """FluxRun shipping to a DSN whose server is down: the sender's retries and the spool run meanwhile."""
    directory = Path(args.workdir) / f"ship-{config.name}-{args.round}"
    dsn = f"http://frt_bench@127.0.0.1:{closed_loopback_port()}/bench"
    fluxrun.init(dsn=dsn, directory=directory, capture_key=args.capture_key, sample_rate=0.0)

    @fluxrun.capture
    def fail_once() -> None:
        raise RuntimeError("the first bundle walks the sender into its server-down state")

    with contextlib.suppress(RuntimeError):
        fail_once()
    fluxrun.flush(timeout=10)  # three refused attempts with backoff, then the spool: the state timed below
    app, _ = build_app(charge, config.fail)
    app.add_middleware(fluxrun.FluxRunMiddleware)

    def finish() -> dict[str, Any]:
        fluxrun.shutdown(timeout=60)
        stats = fluxrun.stats()
        return {"shipping": {k: stats[k] for k in ("sealed", "sent", "retried", "spooled", "dropped")}}

    return app, lambda: None, finish


def setup_sentry(config: AsgiConfig, args: argparse.Namespace) -> Setup:
    import sentry_sdk
    from sentry_sdk.transport import Transport

    sent = Counter[str]()

    class DiscardTransport(Transport):
        def capture_envelope(self, envelope: Any) -> None:
            sent["envelopes"] += 1

    sentry_sdk.init(
        dsn="https://public@127.0.0.1:9/1",
        transport=DiscardTransport,
        traces_sample_rate=1.0 if config.sdk == "sentry_traces" else 0.0,
    )
    app, _ = build_app(charge_plain, config.fail)

    def finish() -> dict[str, Any]:
        sentry_sdk.flush(timeout=5)
        return {"envelopes": sent["envelopes"]}

    return app, lambda: None, finish


def setup_otel(config: AsgiConfig, args: argparse.Namespace) -> Setup:
    from opentelemetry import trace
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    app, client = build_app(charge_plain, config.fail)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
    HTTPXClientInstrumentor().instrument(tracer_provider=provider)  # patches HTTPTransport only...
    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider)  # ...so also the MockTransport
    spans = Counter[str]()

    def on_batch() -> None:
        spans["spans"] += len(exporter.get_finished_spans())
        exporter.clear()

    def finish() -> dict[str, Any]:
        on_batch()
        return dict(spans)

    return app, on_batch, finish


SETUPS: dict[str, Callable[[AsgiConfig, argparse.Namespace], Setup]] = {
    "none": setup_none,
    "fluxrun": setup_fluxrun,
    "fluxrun_ship_down": setup_fluxrun_ship_down,
    "sentry": setup_sentry,
    "sentry_traces": setup_sentry,
    "otel": setup_otel,
}


async def drive(app: Any, requests: int, warmup: int, on_batch: Callable[[], None]) -> dict[str, Any]:
    """Send `warmup` then `requests` requests to the ASGI app one after another; per-request latency in ns."""
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses[message["status"]] += 1

    async def request(scope: dict[str, Any]) -> None:
        try:
            await app(scope, receive, send)
        except Exception as exc:  # a failing handler: the server in front would answer 500
            errors[type(exc).__name__] += 1

    def new_scope() -> dict[str, Any]:
        return {**HTTP_SCOPE, "headers": list(HTTP_SCOPE["headers"]), "state": {}}

    for _ in range(warmup):
        await request(new_scope())
    on_batch()
    statuses.clear()
    errors.clear()
    gc.collect()
    latencies = []
    cpu = []  # the same requests in this thread's CPU time: what the code costs, without the time the
    # shared machine's scheduler gave to other processes in the middle of a request
    cpu_ns = REAL.cpu_ns
    for i in range(requests):
        if i and i % BATCH == 0:
            on_batch()
        scope = new_scope()
        cpu_started = cpu_ns()
        started = now_ns()
        await request(scope)
        latencies.append(now_ns() - started)
        cpu.append(cpu_ns() - cpu_started)
    return {"latencies_ns": latencies, "cpu_ns": cpu, "statuses": dict(statuses), "errors": dict(errors)}


def child_main(args: argparse.Namespace) -> int:
    """`--config NAME`: measure one ASGI configuration and print the result as one JSON line on stdout."""
    config = CONFIG_BY_NAME[args.config]
    app, on_batch, finish = SETUPS[config.sdk](config, args)
    result = asyncio.run(drive(app, args.requests, args.warmup, on_batch))
    result["notes"] = {**finish(), "requests_total": args.warmup + args.requests}  # warm-up included
    result["notes"]["fluxrun_file"] = fluxrun.__file__  # which FluxRun this child imported (the A/B checks it)
    result["config"] = config.name
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


def run_child(
    config: AsgiConfig,
    requests: int,
    settings: Settings,
    workdir: Path,
    keys: tuple[Path, Path],
    round_: int,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--config",
        config.name,
        "--workdir",
        str(workdir),
        "--capture-key",
        str(keys[0]),
        "--replay-key",
        str(keys[1]),
        "--requests",
        str(requests),
        "--warmup",
        str(settings.asgi_warmup),
        "--round",
        str(round_),
    ]
    # one hash seed for every child: string hashing (dict layouts) is not one more difference between processes
    child_env = {**(env if env is not None else os.environ), "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=child_env)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"--config {config.name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def ab_ratio(ours: float, theirs: float) -> float:
    return ours / theirs if theirs > 0 else math.nan


def bootstrap_ratio(pairs: list[list[float]], resamples: int = 2000) -> tuple[float, float]:
    """A 95% interval of the ratio of the two added p50s: rounds resampled with replacement (fixed seed)."""
    rng = random.Random(20261204)
    ratios = []
    for _ in range(resamples):
        sample = [pairs[rng.randrange(len(pairs))] for _ in pairs]
        ratios.append(ab_ratio(statistics.median(p[0] for p in sample), statistics.median(p[1] for p in sample)))
    ratios = sorted(r for r in ratios if not math.isnan(r)) or [math.nan]
    return ratios[int(0.025 * (len(ratios) - 1))], ratios[int(0.975 * (len(ratios) - 1))]


def ab_line(asgi: dict[str, Any]) -> str | None:
    """The A/B figures in words, printed under section 3's table."""
    ab = asgi.get("ab")
    if not ab:
        return None
    rounds = ", ".join(f"{mine:+.1f}/{theirs:+.1f}" for mine, theirs in ab["round_added_p50_us"])
    return (
        f"A/B: added p50 {ab['added_p50_us'][0]:+.1f} µs (this tree) vs {ab['added_p50_us'][1]:+.1f} µs "
        f"({ab['rev']} = {ab['commit']}), ratio {ab['ratio_added_p50']:.2f}x; CPU time {ab['added_cpu_p50_us'][0]:+.1f}"
        f" vs {ab['added_cpu_p50_us'][1]:+.1f} µs, ratio {ab['ratio_added_cpu_p50']:.2f}x; target <= "
        f"{AB_RATIO_TARGET:.2f}x. 95% interval of the ratio over the rounds (bootstrap) {ab['ratio_ci95'][0]:.2f}x "
        f"to {ab['ratio_ci95'][1]:.2f}x; median per-round difference {ab['paired_difference_p50_us']:+.1f} µs. "
        f"Per round (this tree/{ab['commit']}): {rounds}"
    )


@dataclass(frozen=True)
class Baseline:
    """`--baseline REV`: the FluxRun of REV, checked out (`git archive`) beside this run's."""

    rev: str  # as given
    commit: str  # its short hash
    src: Path  # <checkout>/src, the PYTHONPATH of the (b') subprocess


_checkouts: list[Path] = []  # removed when the run ends


def checkout_baseline(rev: str, workdir: Path) -> Baseline:
    """`git -C <repo> archive REV | tar -x` into a folder named after REV's commit (not inside the run's
    randomly named temporary folder): the path of the code REV runs from is the same in every run, so its
    instruction counts repeat (they moved by thousands per request with the random part of the path)."""
    repo = Path(__file__).resolve().parent.parent
    found = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--short", f"{rev}^{{commit}}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if found.returncode != 0:
        raise SystemExit(f"--baseline {rev}: no such commit in {repo} (give a commit, tag or branch of this clone)")
    commit = found.stdout.strip()
    target = Path(tempfile.gettempdir()) / f"fluxrun-bench-baseline-{commit}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    _checkouts.append(target)
    archive = subprocess.Popen(["git", "-C", str(repo), "archive", commit], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(target)], stdin=archive.stdout, check=True)
    assert archive.stdout is not None
    archive.stdout.close()
    if archive.wait() != 0 or not (target / "src" / "fluxrun" / "__init__.py").exists():
        raise RuntimeError(f"could not check out {rev} ({commit}) with git archive into {target}")
    return Baseline(rev, commit, target / "src")


def measure_asgi(
    settings: Settings,
    workdir: Path,
    keys: tuple[Path, Path],
    console: Console,
    baseline: Baseline | None = None,
    ab_only: bool = False,
) -> dict[str, Any]:
    """Run every configuration in its own subprocess, in interleaved rounds; pool each one's latencies.

    With a baseline, (b') runs beside (b) in every round (after it in even rounds, before it in odd ones, so
    neither always runs second): the same child code, importing REV's FluxRun. `ab_only`: only (a), (b), (b').

    The load of a shared machine drifts between rounds, so an "added" figure is the median over rounds of
    the difference to its baseline within the same round (pooled percentiles would mostly say which
    configuration happened to run in the busier round); p50/p99 themselves are of the pooled requests."""
    per_round = math.ceil(settings.asgi_requests / settings.asgi_rounds)
    configs: list[AsgiConfig] = list(ASGI_CONFIGS)
    env: dict[str, dict[str, str]] = {}
    if baseline is not None:
        if ab_only:
            configs = [CONFIG_BY_NAME["plain"], CONFIG_BY_NAME["fluxrun"]]
        configs.insert(configs.index(CONFIG_BY_NAME["fluxrun"]) + 1, BASELINE_CONFIG)
        path = os.pathsep.join(p for p in (str(baseline.src), os.environ.get("PYTHONPATH", "")) if p)
        env[BASELINE_CONFIG.name] = {**os.environ, "PYTHONPATH": path}
    pooled: dict[str, list[int]] = {config.name: [] for config in configs}
    pooled_cpu: dict[str, list[int]] = {config.name: [] for config in configs}
    details: dict[str, dict[str, Any]] = {
        config.name: {"statuses": Counter(), "errors": Counter(), "notes": [], "round_p50_us": [], "rounds": []}
        for config in configs
    }
    for round_ in range(settings.asgi_rounds):
        order = list(configs)
        if baseline is not None and round_ % 2:
            i = order.index(BASELINE_CONFIG)
            order[i - 1], order[i] = order[i], order[i - 1]
        for config in order:
            console.print(f"  [dim]round {round_ + 1}/{settings.asgi_rounds}: {config.name}[/dim]")
            result = run_child(config, per_round, settings, workdir, keys, round_, env.get(config.name))
            pooled[config.name].extend(result["latencies_ns"])
            pooled_cpu[config.name].extend(result["cpu_ns"])
            details[config.name]["statuses"].update({int(k): v for k, v in result["statuses"].items()})
            details[config.name]["errors"].update(result["errors"])
            details[config.name]["notes"].append(result["notes"])
            details[config.name]["round_p50_us"].append(percentile(sorted(result["latencies_ns"]), 50) / 1000)
            wall, cpu = sorted(result["latencies_ns"]), sorted(result["cpu_ns"])
            details[config.name]["rounds"].append(
                {
                    "p50_us": percentile(wall, 50) / 1000,
                    "p99_us": percentile(wall, 99) / 1000,
                    "cpu_p50_us": percentile(cpu, 50) / 1000,
                    "cpu_p99_us": percentile(cpu, 99) / 1000,
                }
            )
    results = {}
    for config in configs:
        latencies = sorted(ns / 1000 for ns in pooled[config.name])
        cpu = sorted(ns / 1000 for ns in pooled_cpu[config.name])
        label = config.label
        if config is BASELINE_CONFIG and baseline is not None:
            label = f"(b') FluxRun middleware at {baseline.rev} ({baseline.commit})"
        results[config.name] = {
            "label": label,
            "requests": len(latencies),
            "p50_us": percentile(latencies, 50),
            "p99_us": percentile(latencies, 99),
            "cpu_p50_us": percentile(cpu, 50),
            "cpu_p99_us": percentile(cpu, 99),
            "statuses": dict(details[config.name]["statuses"]),
            "errors": dict(details[config.name]["errors"]),
            "notes": details[config.name]["notes"],
            "round_p50_us": details[config.name]["round_p50_us"],
            "rounds": details[config.name]["rounds"],
            "baseline": config.baseline,
        }
    for result in results.values():
        base = results.get(result["baseline"] or "")
        if base:
            pairs = list(zip(result["rounds"], base["rounds"], strict=True))
            for stat in ("p50_us", "p99_us", "cpu_p50_us", "cpu_p99_us"):
                result[f"added_{stat}"] = statistics.median(mine[stat] - theirs[stat] for mine, theirs in pairs)
            result["ratio_p50"] = statistics.median(mine["p50_us"] / theirs["p50_us"] for mine, theirs in pairs)
    if baseline is not None:
        ours, theirs = results["fluxrun"], results[BASELINE_CONFIG.name]
        files = {n.get("fluxrun_file", "?") for n in theirs["notes"]}
        if not all(f.startswith(str(baseline.src)) for f in files):
            raise RuntimeError(f"(b') imported FluxRun from {files}, not from the checkout of {baseline.rev}")
        results["ab"] = {
            "rev": baseline.rev,
            "commit": baseline.commit,
            "added_p50_us": [ours["added_p50_us"], theirs["added_p50_us"]],
            "added_cpu_p50_us": [ours["added_cpu_p50_us"], theirs["added_cpu_p50_us"]],
            # within 10%: ours <= 1.10 x theirs (a ratio only means something when theirs is above zero)
            "ratio_added_p50": ab_ratio(ours["added_p50_us"], theirs["added_p50_us"]),
            "ratio_added_cpu_p50": ab_ratio(ours["added_cpu_p50_us"], theirs["added_cpu_p50_us"]),
            "pass": ours["added_p50_us"] <= AB_RATIO_TARGET * theirs["added_p50_us"],
            "pass_cpu": ours["added_cpu_p50_us"] <= AB_RATIO_TARGET * theirs["added_cpu_p50_us"],
            "round_added_p50_us": [
                [mine["p50_us"] - plain["p50_us"], base["p50_us"] - plain["p50_us"]]
                for mine, base, plain in zip(ours["rounds"], theirs["rounds"], results["plain"]["rounds"], strict=True)
            ],
        }
        pairs = results["ab"]["round_added_p50_us"]
        results["ab"]["paired_difference_p50_us"] = statistics.median(mine - base for mine, base in pairs)
        results["ab"]["ratio_ci95"] = bootstrap_ratio(pairs)
    return results


# ------------------------------------------------------------------------------------------------------
# Section 4: seal and open
# ------------------------------------------------------------------------------------------------------

SEAL_SIZES = (("4 KiB", 4 << 10), ("16 KiB", 16 << 10), ("1 MiB", 1 << 20))
_WORD_LIST = """amber basalt cedar delta ember fjord granite harbor indigo juniper kelp lumen maple nickel onyx pepper
quartz raven saffron tundra umber violet willow xenon yarrow zephyr order invoice shipment refund coupon customer"""
WORDS = tuple(_WORD_LIST.split())  # vocabulary of the generated bodies and messages
EVENT_CYCLE = ("env", "env", "time", "random", "log", "http", "env", "time", "host", "http", "log", "random")


def words(rng: random.Random, length: int) -> str:
    """Plain ASCII text (no JSON escapes) of exactly `length` characters."""
    text = ""
    while len(text) < length:
        text += rng.choice(WORDS) + " "
    return text[:length]


def json_body(rng: random.Random, approx: int) -> str:
    """A JSON document of about `approx` bytes, like an API response listing products."""
    items: list[dict[str, Any]] = []
    size = 2
    while size < approx:
        item = {
            "id": rng.randrange(10**6),
            "name": words(rng, rng.randrange(10, 30)).strip(),
            "price": round(rng.uniform(1, 500), 2),
            "stock": rng.randrange(100),
            "tags": rng.sample(WORDS, 2),
        }
        items.append(item)
        size += len(orjson.dumps(item)) + 1
    return orjson.dumps({"items": items, "next": None}).decode()


def sample_event(seq: int, rng: random.Random) -> dict[str, Any]:
    """One event as `build_payload` writes it, cycling through the kinds an HTTP handler records."""
    kind = EVENT_CYCLE[seq % len(EVENT_CYCLE)]
    event: dict[str, Any] = {
        "seq": seq,
        "kind": kind,
        "task": "0",
        "site": f"shop.orders:get_order:{40 + seq % 30}",
        "start_ns": seq * 48_000 + rng.randrange(1000),
        "dur_ns": rng.randrange(200, 90_000),
    }
    if kind == "env":
        event["call"], event["data"] = (
            "env BENCH_REGION",
            {"key": "BENCH_REGION", "present": True, "value": "eu-west-1"},
        )
    elif kind == "time":
        event["call"], event["data"] = "time.time", {"value": 1_760_000_000.0 + seq / 1000}
    elif kind == "random":
        event["call"], event["data"] = "uuid.uuid4", {"value": {"$uuid": f"{rng.getrandbits(128):032x}"}}
    elif kind == "log":
        message = f"reserved {rng.randrange(9)} items for order {rng.randrange(10**5)} ({words(rng, 30)})"
        event["call"] = "INFO shop.orders"
        event["data"] = {
            "logger": "shop.orders",
            "level": "INFO",
            "message": message,
            "file": "/srv/shop/orders.py",
            "line": 87,
        }
    elif kind == "host":
        event["call"] = "payments.charge"
        event["data"] = {
            "name": "payments.charge",
            "args": [rng.randrange(10**5), 4990],
            "kwargs": {"currency": "EUR"},
            "result": {"id": f"ch_{rng.getrandbits(64):016x}", "status": "declined"},
        }
    else:
        request_body = json_body(rng, 200)
        response_body = json_body(rng, rng.randrange(800, 3000))
        headers = [["content-type", "application/json"], ["x-request-id", f"{rng.getrandbits(64):016x}"]]
        event["call"] = "POST http://inventory.internal/v1/reserve"
        event["data"] = {
            "client": "httpx",
            "request": {
                "method": "POST",
                "url": "http://inventory.internal/v1/reserve",
                "headers": headers,
                "body": {"text": request_body, "size": len(request_body)},
            },
            "stream": False,
            "response": {
                "status": 200,
                "reason": "OK",
                "http_version": "HTTP/1.1",
                "headers": headers,
                "redirects": 0,
                "body": {"text": response_body, "size": len(response_body), "encoding": "decoded"},
            },
        }
    return event


def realistic_payload(target: int, rng: random.Random) -> dict[str, Any]:
    """A payload shaped like `build_payload`'s, whose orjson encoding is `target` bytes (within a few)."""
    frames = [
        {
            "module": "shop.orders",
            "function": "get_order",
            "line": 90 + i,
            "in_app": True,
            "context": f"    receipt = charge(order_id, amount={i})",
        }
        for i in range(6)
    ]
    payload: dict[str, Any] = {
        "format": 1,
        "bundle_id": "0" * 32,
        "execution": "asgi",
        "entry": "shop.app:app",
        "started_at": "2025-10-09T12:00:00.000000Z",
        "request": {
            "method": "POST",
            "path": "/orders/42",
            "route": "/orders/{order_id}",
            "query_string": "",
            "headers": [["content-type", "application/json"], ["user-agent", "shop-web/3.2"]],
            "body": {"text": json_body(rng, 300), "size": 300},
        },
        "events": [],
        "outcome": {
            "kind": "error",
            "status": 500,
            "error": {
                "type": "shop.payments:Declined",
                "message": "card declined",
                "fingerprint": "f" * 16,
                "frames": frames,
            },
        },
        "sdk": {"name": "fluxrun.python", "version": fluxrun.__version__},
        "release": "shop@3.2.1",
        "environment": "production",
        "runtime": {"python": platform.python_version(), "implementation": sys.implementation.name},
    }
    size = len(orjson.dumps(payload))
    while True:
        event = sample_event(len(payload["events"]), rng)
        added = len(orjson.dumps(event)) + (1 if payload["events"] else 0)
        if size + added > target:
            break
        payload["events"].append(event)
        size += added
    fill_with_log_event(payload, target - size, rng)
    return payload


def fill_with_log_event(payload: dict[str, Any], gap: int, rng: random.Random) -> None:
    """Top the payload up to its target size with one log event whose message has the missing length."""
    event = sample_event(4, rng)  # a log event
    event["seq"] = len(payload["events"])
    event["data"]["message"] = ""
    overhead = len(orjson.dumps(event)) + (1 if payload["events"] else 0)
    if gap > overhead:
        event["data"]["message"] = words(rng, gap - overhead)
        payload["events"].append(event)


def summary_for(payload: dict[str, Any]) -> dict[str, Any]:
    """A plaintext summary shaped like `build_summary`'s: an index of the events, no bodies or values."""
    events = payload["events"]
    return {
        "bundle_id": payload["bundle_id"],
        "execution": payload["execution"],
        "entry": payload["entry"],
        "started_at": payload["started_at"],
        "duration_ms": 12.345,
        "route": "/orders/{order_id}",
        "method": "POST",
        "path": "/orders/42",
        "status": 500,
        "outcome": "error",
        "error": {"type": "shop.payments:Declined", "message": "card declined"},
        "fingerprint": "f" * 16,
        "request_id": "9f1c0d2e3b4a59687766554433221100",
        "trace_id": None,
        "events": [
            {
                "seq": e["seq"],
                "kind": e["kind"],
                "label": e["call"],
                "task": e["task"],
                "start_ms": round(e["start_ns"] / 1e6, 3),
                "dur_ms": round(e["dur_ns"] / 1e6, 3),
            }
            for e in events
        ],
        "counts": dict(Counter(e["kind"] for e in events)),
        "sdk": payload["sdk"],
        "release": payload["release"],
        "environment": payload["environment"],
    }


def time_calls(call: Callable[[], Any], iterations: int) -> list[float]:
    """µs of each of `iterations` calls, after a short warm-up."""
    for _ in range(min(3, iterations)):
        call()
    gc.collect()
    samples = []
    for _ in range(iterations):
        started = now_ns()
        call()
        samples.append((now_ns() - started) / 1000)
    return samples


def measure_seal(settings: Settings, capture_key: Path, replay_key: Path) -> list[dict[str, Any]]:
    sealer = Sealer(load_capture_key(capture_key), sdk="bench")
    key = load_replay_key(replay_key)
    rng = random.Random(20251009)
    rows = []
    for (label, target), iterations in zip(SEAL_SIZES, settings.seal_iterations, strict=True):
        payload = realistic_payload(target, rng)
        summary = summary_for(payload)
        ids = iter(f"{i:032x}" for i in range(10**9))

        def seal(payload: dict[str, Any] = payload, summary: dict[str, Any] = summary, ids: Any = ids) -> bytes:
            return sealer.seal(summary=summary, payload=payload, bundle_id=next(ids))

        bundle = seal()
        if open_bundle(bundle, key).payload != payload:
            raise AssertionError(f"{label}: the opened payload differs from the sealed one")
        seal_us = time_calls(seal, iterations)
        open_us = time_calls(lambda bundle=bundle: open_bundle(bundle, key), iterations)
        rows.append(
            {
                "label": label,
                "payload_bytes": len(orjson.dumps(payload)),
                "events": len(payload["events"]),
                "bundle_bytes": len(bundle),
                "seal_us": statistics.median(seal_us),
                "open_us": statistics.median(open_us),
                "iterations": iterations,
            }
        )
    return rows


# ------------------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------------------


def per_call_table(baseline: dict[str, float], idle: dict[str, float]) -> Table:
    table = Table(
        title="1. Idle cost per intercepted call (init done, nothing captured)",
        title_justify="left",
        caption="timeit-style loops in CPU time, median of repeats; each repeat times the baseline with FluxRun "
        "shut down, then the idle loop after fluxrun.init (for @boundary: the undecorated function)",
        caption_justify="left",
    )
    for column in ("IO call", "baseline ns", "idle ns", "added ns", "ratio", "target"):
        table.add_column(column, justify="left" if column in ("IO call", "target") else "right")
    for kind in KINDS:
        added = idle[kind.name] - baseline[kind.name]
        target = f"< {IDLE_TARGET_NS} ns {verdict(added < IDLE_TARGET_NS)}" if kind.group in IDLE_TARGET_GROUPS else ""
        table.add_row(
            escape(kind.name),
            f"{baseline[kind.name]:.0f}",
            f"{idle[kind.name]:.0f}",
            f"{added:+.0f}",
            f"{idle[kind.name] / baseline[kind.name]:.2f}x",
            target,
        )
    return table


def capture_table(baseline: dict[str, float], capturing: dict[str, float], events: dict[str, float]) -> Table:
    table = Table(
        title=f"2. Cost per call while capturing ({CALLS_PER_EXECUTION} calls per execution, then discarded)",
        title_justify="left",
        caption="inside @fluxrun.capture'd executions that return normally (recorded, then dropped at the end); "
        "added = capturing - the baseline of table 1, where capturing = table 1's idle + (captured - uncaptured, "
        "timed in alternation); events/call read back from a sealed probe bundle",
        caption_justify="left",
    )
    for column in ("IO call", "baseline µs", "capturing µs", "added µs", "ratio", "events/call", "target"):
        table.add_column(column, justify="left" if column in ("IO call", "target") else "right")
    for kind in KINDS:
        added_us = (capturing[kind.name] - baseline[kind.name]) / 1000
        ok = added_us < CAPTURE_HTTP_TARGET_US
        target = f"< {CAPTURE_HTTP_TARGET_US} µs {verdict(ok)}" if kind.group == "http" else ""
        table.add_row(
            escape(kind.name),
            f"{baseline[kind.name] / 1000:.3f}",
            f"{capturing[kind.name] / 1000:.3f}",
            f"{added_us:+.3f}",
            f"{capturing[kind.name] / baseline[kind.name]:.1f}x",
            f"{events.get(kind.name, math.nan):g}",
            target,
        )
    return table


def asgi_notes(result: dict[str, Any]) -> str:
    """Sanity facts per configuration; counts include the warm-up requests (`total`)."""
    notes = result["notes"]
    total = sum(n["requests_total"] for n in notes)
    parts = [
        "status " + ",".join(f"{k}x{v}" for k, v in sorted(result["statuses"].items())),
        "round p50 " + "/".join(f"{v:.0f}" for v in result["round_p50_us"]),
    ]
    if any("bundles" in n for n in notes):
        parts.append(f"bundles {sum(n['bundles'] for n in notes)} of {total} req")
        kinds = next((n["events_by_kind"] for n in notes if n.get("events_by_kind")), None)
        if kinds:
            parts.append("events " + " ".join(f"{k}={v}" for k, v in sorted(kinds.items())))
    if any("shipping" in n for n in notes):
        shipping = Counter[str]()
        for n in notes:
            shipping.update(n.get("shipping", {}))
        parts.append(" ".join(f"{k} {v}" for k, v in shipping.items()) + f" of {total} req")
    if any("envelopes" in n for n in notes):
        parts.append(f"envelopes {sum(n['envelopes'] for n in notes)} for {total} req")
    if any("spans" in n for n in notes):
        parts.append(f"spans/req {sum(n['spans'] for n in notes) / total:.1f}")
    return "; ".join(parts)


def asgi_table(results: dict[str, Any], settings: Settings) -> Table:
    table = Table(
        title=f"3. ASGI per-request latency, FastAPI handler with 10 IO events ({EVENTS_PER_REQUEST})",
        title_justify="left",
        caption=f"ASGI app called in-process (no sockets), one request at a time; per configuration "
        f"{settings.asgi_requests} requests pooled over {settings.asgi_rounds} interleaved round(s), each a fresh "
        f"subprocess with {settings.asgi_warmup} warm-up requests. added = configuration - plain (- plain_fail for "
        "(f) and (g)) within each round, median over rounds. Only FluxRun configurations decorate the boundary "
        "function. cpu: the same requests in the "
        "thread's CPU time (time.thread_time_ns), which leaves out the scheduler's preemptions on a shared machine.",
        caption_justify="left",
    )
    columns = ("configuration", "p50 µs", "p99 µs", "added p50", "added p99", "p50 ratio", "cpu added p50/p99")
    for column in (*columns, "target", "notes"):
        table.add_column(column, justify="left" if column in ("configuration", "target", "notes") else "right")
    for name, result in results.items():
        if name == "ab":
            continue
        has_base = "added_p50_us" in result
        target = ""
        if name == "fluxrun" and "ab" in results:
            target = (
                f"p50 < {ASGI_P50_TARGET_US} {verdict(result['added_p50_us'] < ASGI_P50_TARGET_US)}, "
                f"A/B {results['ab']['ratio_added_p50']:.2f}x of (b') "
                + ("[green]pass[/green]" if results["ab"]["pass"] else "[red]FAIL[/red]")
            )
        elif name == "fluxrun":
            target = (
                f"p50 < {ASGI_P50_TARGET_US} {verdict(result['added_p50_us'] < ASGI_P50_TARGET_US)}, "
                f"p99 < {ASGI_P99_TARGET_US} {verdict(result['added_p99_us'] < ASGI_P99_TARGET_US)}"
            )
        elif name == "fluxrun_ship_down":
            target = f"p99 < {SHIP_DOWN_P99_TARGET_US} {verdict(result['added_p99_us'] < SHIP_DOWN_P99_TARGET_US)}"
        table.add_row(
            result["label"],
            f"{result['p50_us']:.1f}",
            f"{result['p99_us']:.1f}",
            f"{result['added_p50_us']:+.1f}" if has_base else "baseline",
            f"{result['added_p99_us']:+.1f}" if has_base else "",
            f"{result['ratio_p50']:.2f}x" if has_base else "",
            f"{result['added_cpu_p50_us']:+.1f} / {result['added_cpu_p99_us']:+.1f}"
            if has_base
            else f"({result['cpu_p50_us']:.1f} / {result['cpu_p99_us']:.1f})",
            target,
            asgi_notes(result),
        )
    return table


def seal_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(
        title="4. Seal and open (median µs)",
        title_justify="left",
        caption="seal: orjson + zstd + AES-GCM + Ed25519 signature; open: verify + X25519 unwrap + decrypt + "
        "decompress + parse",
        caption_justify="left",
    )
    for column in ("payload", "orjson bytes", "events", "bundle bytes", "seal µs", "open µs", "runs", "target"):
        table.add_column(column, justify="left" if column in ("payload", "target") else "right")
    for row in rows:
        target = (
            f"seal < {SEAL_16K_TARGET_US} µs {verdict(row['seal_us'] < SEAL_16K_TARGET_US)}"
            if row["label"] == "16 KiB"
            else ""
        )
        table.add_row(
            row["label"],
            f"{row['payload_bytes']:,}",
            str(row["events"]),
            f"{row['bundle_bytes']:,}",
            f"{row['seal_us']:.1f}",
            f"{row['open_us']:.1f}",
            str(row["iterations"]),
            target,
        )
    return table


def collect_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target with its measured value, from the sections' results."""
    targets = []

    def add(name: str, value: float, limit: float, unit: str) -> None:
        targets.append({"target": f"{name} < {limit} {unit}", "measured": value, "unit": unit, "pass": value < limit})

    for kind in KINDS:
        if kind.group in IDLE_TARGET_GROUPS:
            add(f"idle added, {kind.name}", results["idle_added_ns"][kind.name], IDLE_TARGET_NS, "ns")
    for kind in KINDS:
        if kind.group == "http":
            add(f"capturing added, {kind.name}", results["capturing_added_us"][kind.name], CAPTURE_HTTP_TARGET_US, "µs")
    targets.extend(asgi_targets(results["asgi"]))
    seal_16k = next(row for row in results["seal"] if row["label"] == "16 KiB")
    add("seal 16 KiB", seal_16k["seal_us"], SEAL_16K_TARGET_US, "µs")
    db = results.get("db")
    if db:
        targets.extend(db_targets(db))
    if results.get("clients"):
        targets.extend(client_targets(results["clients"]))
    return targets


def asgi_targets(asgi: dict[str, Any]) -> list[dict[str, Any]]:
    """Section 3's targets, with the A/B one when a `--baseline` ran beside."""
    targets = []

    def add(name: str, value: float, limit: float, unit: str) -> None:
        targets.append({"target": f"{name} < {limit} {unit}", "measured": value, "unit": unit, "pass": value < limit})

    ours = asgi["fluxrun"]
    add("ASGI FluxRun added p50", ours["added_p50_us"], ASGI_P50_TARGET_US, "µs")
    add("ASGI FluxRun added p99", ours["added_p99_us"], ASGI_P99_TARGET_US, "µs")
    add("ASGI FluxRun added p50, CPU time", ours["added_cpu_p50_us"], ASGI_P50_TARGET_US, "µs")
    add("ASGI FluxRun added p99, CPU time", ours["added_cpu_p99_us"], ASGI_P99_TARGET_US, "µs")
    down = asgi.get("fluxrun_ship_down")
    if down:
        add("ASGI shipping on, server down, added p99", down["added_p99_us"], SHIP_DOWN_P99_TARGET_US, "µs")
    ab = asgi.get("ab")
    if ab:
        for label, ratio, ok in (
            ("", ab["ratio_added_p50"], ab["pass"]),
            (", CPU time", ab["ratio_added_cpu_p50"], ab["pass_cpu"]),
        ):
            targets.append(
                {
                    "target": f"ASGI added p50 within 10% of {ab['rev']}'s{label}: ratio <= {AB_RATIO_TARGET:.2f}",
                    "measured": ratio,
                    "unit": "x",
                    "pass": ok,
                }
            )
    return targets


# ------------------------------------------------------------------------------------------------------
# Section 5: the database client, beside OpenTelemetry's SQLAlchemy instrumentation
# ------------------------------------------------------------------------------------------------------

DB_CAPTURE_TARGET_US = 15
DB_SQLITE = Kind("sqlite3 execute+fetchone", "bench_sqlite.execute('SELECT 1').fetchone()", "db")
DB_PSYCOPG = Kind("psycopg execute+fetchone", "bench_pg.execute('SELECT 1').fetchone()", "db")
DB_PSYCOPG2 = Kind("psycopg2 execute+fetchone", "bench_pg2.execute('SELECT 1'); bench_pg2.fetchone()", "db")
DB_SQLALCHEMY = Kind("SQLAlchemy Core execute+scalar", "bench_sa.execute(BENCH_SELECT).scalar()", "db")
DB_OTEL_STMT = "bench_sa_otel.execute(BENCH_SELECT).scalar()"


class DbClients:
    """The connections the measured statements use (module globals, so the compiled loops see them)."""

    def __init__(self, workdir: Path) -> None:
        import sqlalchemy

        self.cluster: Any = None
        try:
            sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "support"))
            from postgres import start_cluster

            self.cluster = start_cluster()
        except Exception as exc:  # no PostgreSQL binaries: sqlite3 only
            self.note = f"no throwaway PostgreSQL ({exc}); psycopg rows left out, SQLAlchemy on sqlite3"
        else:
            self.note = f"PostgreSQL on 127.0.0.1:{self.cluster.port} (tests/support/postgres.py)"
        self.sqlite_path = str(workdir / "bench.db")
        self.raw_sqlite = sqlite3.connect(self.sqlite_path)  # opened with FluxRun shut down: sqlite3's own
        self.proxied_sqlite: Any = None
        # psycopg2's cursor, like sqlite3's connection, is FluxRun's subclass only when opened with FluxRun installed
        self.raw_pg2: Any = None
        self.proxied_pg2: Any = None
        if self.cluster is not None:
            import psycopg

            url = f"postgresql+psycopg://postgres@127.0.0.1:{self.cluster.port}/postgres"
            globals()["bench_pg"] = psycopg.connect(self.cluster.dsn, autocommit=True)
            self.raw_pg2 = globals()["bench_pg2"] = self.pg2_cursor()
        else:
            url = f"sqlite:///{self.sqlite_path}"
        self.engine = sqlalchemy.create_engine(url)
        self.otel_engine = sqlalchemy.create_engine(url)
        globals()["BENCH_SELECT"] = sqlalchemy.text("SELECT 1")
        globals()["bench_sa"] = self.engine.connect()
        postgres = (DB_PSYCOPG, DB_PSYCOPG2) if self.raw_pg2 is not None else (DB_PSYCOPG,)
        self.kinds = (DB_SQLITE, *postgres, DB_SQLALCHEMY) if self.cluster is not None else (DB_SQLITE, DB_SQLALCHEMY)
        globals()["bench_sqlite"] = self.raw_sqlite

    def pg2_cursor(self) -> Any:
        """A psycopg2 cursor on an autocommit connection (None without psycopg2: its row is left out)."""
        try:
            import psycopg2
        except ImportError:
            return None
        conn = psycopg2.connect(self.cluster.dsn)
        conn.autocommit = True
        return conn.cursor()

    def fluxrun_started(self) -> None:
        if self.proxied_sqlite is None:
            self.proxied_sqlite = sqlite3.connect(self.sqlite_path)  # opened with FluxRun installed: its subclass
        globals()["bench_sqlite"] = self.proxied_sqlite
        if self.raw_pg2 is not None:
            if self.proxied_pg2 is None:
                self.proxied_pg2 = self.pg2_cursor()
            globals()["bench_pg2"] = self.proxied_pg2

    def fluxrun_stopped(self) -> None:
        globals()["bench_sqlite"] = self.raw_sqlite
        if self.raw_pg2 is not None:
            globals()["bench_pg2"] = self.raw_pg2

    def instrument_otel(self) -> Callable[[], None]:
        """OpenTelemetry's SQLAlchemy instrumentation on its own engine; returns the untimed exporter reset."""
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        # skip_dep_check: its declared range stops below SQLAlchemy 2.1, which it instruments all the same
        SQLAlchemyInstrumentor().instrument(engine=self.otel_engine, tracer_provider=provider, skip_dep_check=True)
        globals()["bench_sa_otel"] = self.otel_engine.connect()
        self.otel_spans = exporter
        return exporter.clear

    def close(self) -> None:
        for name in ("bench_sa", "bench_sa_otel", "bench_pg"):
            with contextlib.suppress(Exception):
                globals().pop(name).close()
        for cursor in (self.raw_pg2, self.proxied_pg2):
            if cursor is not None:
                cursor.connection.close()
        self.engine.dispose()
        self.otel_engine.dispose()
        self.raw_sqlite.close()
        if self.proxied_sqlite is not None:
            self.proxied_sqlite.close()
        if self.cluster is not None:
            self.cluster.stop()


def measure_otel_sqlalchemy(settings: Settings, clients: DbClients) -> tuple[float, float]:
    """ns/call of SQLAlchemy Core without and with OpenTelemetry's instrumentation (FluxRun shut down),
    timed in alternation; the span exporter is cleared between repeats, untimed."""
    clear = clients.instrument_otel()
    plain = compile_loop(DB_SQLALCHEMY.stmt, False)
    traced = compile_loop(DB_OTEL_STMT, False)
    n = calibrate(lambda k: timed_run(plain, False, k), settings.loop_budget_ms * 1e6)
    plain_ns, traced_ns = [], []
    for repeat in range(settings.repeats + 1):
        gc.collect()
        plain_run = timed_run(plain, False, n) / n
        clear()
        traced_run = timed_run(traced, False, n) / n
        clear()
        if repeat:
            plain_ns.append(plain_run)
            traced_ns.append(traced_run)
    return statistics.median(plain_ns), statistics.median(traced_ns)


def measure_db(settings: Settings, workdir: Path, start: Callable[[], None], console: Console) -> dict[str, Any]:
    clients = DbClients(workdir)
    console.print(f"  {escape(clients.note)}")
    try:

        def started() -> None:
            start()
            clients.fluxrun_started()

        def stopped() -> None:
            fluxrun.shutdown()
            clients.fluxrun_stopped()

        fluxrun.shutdown()
        clients.fluxrun_stopped()
        collector: dict[str, float] = {}
        try:
            baseline, idle = measure_baseline_and_idle(
                paired_idle_settings(settings), started, stopped, clients.kinds, paired=True
            )
            capturing = measure_capturing(settings, idle, clients.kinds, collector)
        finally:
            stopped()
        otel_plain, otel = measure_otel_sqlalchemy(settings, clients)
        return {
            "note": clients.note,
            "kinds": [kind.name for kind in clients.kinds],
            "baseline_ns": baseline,
            "idle_added_ns": {k: idle[k] - baseline[k] for k in idle},
            "capturing_added_us": {k: (capturing[k] - baseline[k]) / 1000 for k in capturing},
            "collector_us": {k: ns / 1000 for k, ns in collector.items()},
            "otel_baseline_ns": otel_plain,
            "otel_added_us": (otel - otel_plain) / 1000,
        }
    finally:
        clients.close()


def collector_cell(result: dict[str, Any], name: str) -> str:
    """The collector's mean time per captured call (`CollectorTime`), absent from results written before it."""
    value = result.get("collector_us", {}).get(name)
    return "" if value is None else f"{value:.2f}"


def db_table(result: dict[str, Any]) -> Table:
    table = Table(
        title="5. Database client: SELECT 1 and its first row",
        title_justify="left",
        caption=f"{result['note']}; idle and baseline alternate each repeat (CPU time, medians of each repeat's "
        "idle minus its baseline); captured: "
        f"{CALLS_PER_EXECUTION} calls per execution (median of repeats); collector: its mean CPU time per captured "
        "call over all repeats, full collections included; OpenTelemetry: SQLAlchemy instrumentation with an SDK "
        "TracerProvider and an in-memory exporter, on its own engine, beside an uninstrumented one",
        caption_justify="left",
    )
    for column in ("client", "baseline ns", "FluxRun idle added ns", "idle target", "FluxRun captured added µs",
                   "captured target", "collector µs (mean)", "OpenTelemetry added µs"):  # fmt: skip
        table.add_column(column, justify="left" if column == "client" else "right")
    for name in result["kinds"]:
        idle, captured = result["idle_added_ns"][name], result["capturing_added_us"][name]
        otel = f"{result['otel_added_us']:.2f}" if name == DB_SQLALCHEMY.name else ""
        table.add_row(
            escape(name),
            f"{result['baseline_ns'][name]:.0f}",
            f"{idle:+.0f}",
            f"< {IDLE_TARGET_NS} {verdict(idle < IDLE_TARGET_NS)}",
            f"{captured:.2f}",
            f"< {DB_CAPTURE_TARGET_US} {verdict(captured < DB_CAPTURE_TARGET_US)}",
            collector_cell(result, name),
            otel,
        )
    return table


# ------------------------------------------------------------------------------------------------------
# Section 6: HTTP and Redis clients (requests, urllib3, aiohttp, redis-py), beside OpenTelemetry's
# ------------------------------------------------------------------------------------------------------

CLIENT_CAPTURE_TARGET_US = 15  # an HTTP call or a simple query, captured
CLIENT_IDLE_REPEATS = 5  # sections 5 and 6's idle: this many times the repeats, each a quarter of the loop budget


def paired_idle_settings(settings: Settings) -> Settings:
    """Idle of calls of 1 to 250 µs (sections 5 and 6), many of them over loopback to a real server: many short
    repeats, each repeat's idle loop compared with its own baseline, so the server's drift between repeats
    (microseconds per call) cancels instead of swamping a few hundred nanoseconds."""
    return dataclasses.replace(
        settings, repeats=settings.repeats * CLIENT_IDLE_REPEATS, loop_budget_ms=settings.loop_budget_ms / 4
    )


CANNED_BODY = b'{"sku": 42, "stock": 7, "warehouse": "ams-2"}'
CLIENT_REQUESTS = Kind("requests Session.get", "bench_requests.get(INVENTORY_URL)", "client")
CLIENT_URLLIB3 = Kind("urllib3 pool.request", "bench_urllib3.request('GET', '/sku/42')", "client")
CLIENT_AIOHTTP = Kind(
    "aiohttp ClientSession.get",
    "(await bench_aiohttp.get(bench_aiohttp_url)).read()",
    "client",
    is_async=True,
)
CLIENT_REDIS = Kind("redis GET", "bench_redis.get('bench:sku:42')", "client")
CLIENT_REDIS_CLUSTER = Kind("redis RedisCluster GET", "bench_redis_cluster.get('bench:sku:42')", "client")
# the same calls through a client OpenTelemetry instruments (FluxRun shut down), by kind name
CLIENT_OTEL_STMTS = {
    CLIENT_REQUESTS.name: CLIENT_REQUESTS.stmt,
    CLIENT_AIOHTTP.name: "(await bench_aiohttp_otel.get(bench_aiohttp_url)).read()",
    CLIENT_REDIS.name: CLIENT_REDIS.stmt,
    CLIENT_REDIS_CLUSTER.name: CLIENT_REDIS_CLUSTER.stmt,
}


def canned_pool_class() -> type:
    """urllib3's own pool with only the network left out: `_make_request` returns a canned 200 (no socket), so
    urlopen, retries, connection checkout and release, and requests' adapter above them all run as usual."""
    import io

    import urllib3

    class CannedPool(urllib3.HTTPConnectionPool):
        def _make_request(
            self,
            conn: Any,
            method: str,
            url: str,
            body: Any = None,
            headers: Any = None,
            retries: Any = None,
            timeout: Any = None,
            chunked: bool = False,
            response_conn: Any = None,
            preload_content: bool = True,
            decode_content: bool = True,
            enforce_content_length: bool = True,
        ) -> Any:
            return urllib3.HTTPResponse(
                body=io.BytesIO(CANNED_BODY),
                headers={"content-type": "application/json", "content-length": str(len(CANNED_BODY))},
                status=200,
                reason="OK",
                preload_content=preload_content,
                decode_content=decode_content,
                original_response=None,
                pool=self,
                connection=response_conn,
                retries=retries,
                request_method=method,
                request_url=url,
                enforce_content_length=enforce_content_length,
            )

    return CannedPool


def canned_aiohttp_connector() -> Any:
    """aiohttp's TCPConnector with only the socket left out: each connection is aiohttp's own protocol on an
    in-memory transport that answers every request written to it with a canned 200 (keep-alive), so the
    session, connection pool, request writer and response parser all run as usual."""
    import aiohttp
    from aiohttp.client_proto import ResponseHandler

    response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(CANNED_BODY),
        CANNED_BODY,
    )

    class CannedTransport(asyncio.Transport):
        def __init__(self, protocol: Any, loop: asyncio.AbstractEventLoop) -> None:
            super().__init__()
            self.protocol, self.loop, self.closing = protocol, loop, False

        def write(self, data: Any) -> None:
            if b"\r\n\r\n" in bytes(data):  # the request's head (a GET has no body): answer it
                self.loop.call_soon(self.protocol.data_received, response)

        def writelines(self, chunks: Any) -> None:
            self.write(b"".join(chunks))

        def is_closing(self) -> bool:
            return self.closing

        def close(self) -> None:
            if not self.closing:
                self.closing = True
                self.loop.call_soon(self.protocol.connection_lost, None)

        def abort(self) -> None:
            self.close()

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return default

        def get_write_buffer_size(self) -> int:
            return 0

        def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
            pass

        def pause_reading(self) -> None:
            pass

        def resume_reading(self) -> None:
            pass

        def is_reading(self) -> bool:
            return True

        def can_write_eof(self) -> bool:
            return False

    class CannedConnector(aiohttp.TCPConnector):
        async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:
            protocol = ResponseHandler(self._loop)
            protocol.connection_made(CannedTransport(protocol, self._loop))
            return protocol

    return CannedConnector(limit=1)


class HttpClients:
    """The clients section 6 measures (module globals, so the compiled loops see them), and the Redis server."""

    def __init__(self, console: Console) -> None:
        import aiohttp
        import requests

        self.notes: list[str] = []
        pool_class = canned_pool_class()
        session = requests.Session()
        session.trust_env = False  # no ~/.netrc read and no proxy variables walked per request (file IO, noise)
        adapter = requests.adapters.HTTPAdapter()
        adapter.poolmanager.pool_classes_by_scheme = {"http": pool_class, "https": pool_class}
        session.mount("http://", adapter)
        globals()["bench_requests"] = session
        globals()["bench_urllib3"] = pool_class("inventory.local", 80, maxsize=1)
        globals()["bench_aiohttp_url"] = INVENTORY_URL

        async def client_session(**kwargs: Any) -> aiohttp.ClientSession:
            return aiohttp.ClientSession(connector=canned_aiohttp_connector(), **kwargs)

        self.client_session = client_session
        globals()["bench_aiohttp"] = event_loop().run_until_complete(client_session())
        self.kinds: list[Kind] = [CLIENT_REQUESTS, CLIENT_URLLIB3, CLIENT_AIOHTTP]
        self.redis_server: Any = None
        self._redis_context: Any = None
        try:
            sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "support"))
            import redis
            from redis_server import redis_server  # type: ignore[import-not-found]

            self._redis_context = redis_server()
            self.redis_server = self._redis_context.__enter__()
            client = redis.Redis(host=self.redis_server.host, port=self.redis_server.port)
            client.set("bench:sku:42", CANNED_BODY)
            globals()["bench_redis"] = client
            self.kinds.append(CLIENT_REDIS)
            self.notes.append(f"redis-server on 127.0.0.1:{self.redis_server.port} (tests/support/redis_server.py)")
        except Exception as exc:  # no redis-server binary and no way to install it: the redis row is left out
            self.notes.append(f"no redis-server ({exc}); redis row left out")
        self._cluster_context: Any = None
        try:
            from redis.cluster import RedisCluster
            from redis_server import redis_cluster

            self._cluster_context = redis_cluster()
            node = self._cluster_context.__enter__()
            cluster = RedisCluster(host=node.host, port=node.port)
            cluster.set("bench:sku:42", CANNED_BODY)
            globals()["bench_redis_cluster"] = cluster
            self.kinds.append(CLIENT_REDIS_CLUSTER)
            self.notes.append(f"a one-node Redis Cluster on 127.0.0.1:{node.port} (redis_cluster())")
        except Exception as exc:  # the same without the binary; or a redis-server too old for ADDSLOTSRANGE
            self.notes.append(f"no Redis Cluster ({exc}); RedisCluster row left out")
        self.note = "; ".join(self.notes)

    def close(self) -> None:
        loop = event_loop()
        for name in ("bench_aiohttp", "bench_aiohttp_otel"):
            session = globals().pop(name, None)
            if session is not None:
                loop.run_until_complete(session.close())
        for name in ("bench_requests", "bench_urllib3", "bench_redis", "bench_redis_cluster"):
            with contextlib.suppress(Exception):
                globals().pop(name).close()
        for context in (self._redis_context, self._cluster_context):
            if context is not None:
                context.__exit__(None, None, None)


@dataclass
class OtelToggle:
    """One OpenTelemetry instrumentation that can be switched on and off between timed loops."""

    on: Callable[[], None]
    off: Callable[[], None]


def otel_instrumentations(clients: HttpClients) -> tuple[dict[str, OtelToggle], Callable[[], int]]:
    """OpenTelemetry's requests, aiohttp-client and redis instrumentations with an SDK TracerProvider and an
    in-memory exporter; returns a toggle per kind name and the untimed exporter drain (spans since last)."""
    from opentelemetry.instrumentation.aiohttp_client import create_trace_config
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.requests import RequestsInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # aiohttp: its own session with OpenTelemetry's trace config (the instrumentor adds the same to new sessions)
    globals()["bench_aiohttp_otel"] = event_loop().run_until_complete(
        clients.client_session(trace_configs=[create_trace_config(tracer_provider=provider)])
    )
    requests_instrumentor, redis_instrumentor = RequestsInstrumentor(), RedisInstrumentor()
    toggles = {
        CLIENT_REQUESTS.name: OtelToggle(
            lambda: requests_instrumentor.instrument(tracer_provider=provider), requests_instrumentor.uninstrument
        ),
        CLIENT_AIOHTTP.name: OtelToggle(lambda: None, lambda: None),
        CLIENT_REDIS.name: OtelToggle(
            lambda: redis_instrumentor.instrument(tracer_provider=provider), redis_instrumentor.uninstrument
        ),
        # the same instrumentor wraps `RedisCluster.execute_command` too
        CLIENT_REDIS_CLUSTER.name: OtelToggle(
            lambda: redis_instrumentor.instrument(tracer_provider=provider), redis_instrumentor.uninstrument
        ),
    }

    def drain() -> int:
        spans = len(exporter.get_finished_spans())
        exporter.clear()
        return spans

    return toggles, drain


def measure_otel_clients(settings: Settings, clients: HttpClients) -> dict[str, Any]:
    """ns/call of each client without and with OpenTelemetry's instrumentation (FluxRun shut down), timed in
    alternation; spans are counted and cleared between loops, untimed."""
    toggles, drain = otel_instrumentations(clients)
    results: dict[str, Any] = {}
    for kind in clients.kinds:
        if kind.name not in toggles:
            continue
        toggle = toggles[kind.name]
        plain = compile_loop(kind.stmt, kind.is_async)
        traced = compile_loop(CLIENT_OTEL_STMTS[kind.name], kind.is_async)
        n = calibrate(lambda k, loop=plain, a=kind.is_async: timed_run(loop, a, k), settings.loop_budget_ms * 1e6)
        plain_ns, traced_ns, spans = [], [], 0
        for repeat in range(settings.repeats + 1):
            gc.collect()
            plain_run = timed_run(plain, kind.is_async, n) / n
            toggle.on()
            try:
                traced_run = timed_run(traced, kind.is_async, n) / n
            finally:
                toggle.off()
            spans = drain()
            if repeat:
                plain_ns.append(plain_run)
                traced_ns.append(traced_run)
        results[kind.name] = {
            "baseline_ns": statistics.median(plain_ns),
            "added_us": (statistics.median(traced_ns) - statistics.median(plain_ns)) / 1000,
            "spans_per_call": spans / n,
        }
    return results


def measure_clients(
    settings: Settings, start: Callable[[], None], bundles: Path, replay_key: Path, console: Console
) -> dict[str, Any]:
    clients = HttpClients(console)
    console.print(f"  {escape(clients.note)}")
    try:
        fluxrun.shutdown()
        kinds = tuple(clients.kinds)
        collector: dict[str, float] = {}
        try:
            baseline, idle = measure_baseline_and_idle(
                paired_idle_settings(settings), start, fluxrun.shutdown, kinds, paired=True
            )
            capturing = measure_capturing(settings, idle, kinds, collector)
            events = probe_events_per_call(bundles, replay_key, kinds)
        finally:
            fluxrun.shutdown()
        otel = measure_otel_clients(settings, clients)
        return {
            "note": clients.note,
            "kinds": [kind.name for kind in kinds],
            "baseline_ns": baseline,
            "idle_added_ns": {k: idle[k] - baseline[k] for k in idle},
            "capturing_added_us": {k: (capturing[k] - baseline[k]) / 1000 for k in capturing},
            "collector_us": {k: ns / 1000 for k, ns in collector.items()},
            "events_per_call": events,
            "otel": otel,
        }
    finally:
        clients.close()


def clients_table(result: dict[str, Any]) -> Table:
    table = Table(
        title="6. HTTP and Redis clients: one call each (HTTP with the socket stubbed out, Redis over loopback)",
        title_justify="left",
        caption=f"{result['note']}. requests (trust_env off) and urllib3: urllib3's pool with `_make_request` "
        "returning a canned 200 (no socket; the pool, retries and requests' adapter run as usual); aiohttp: a "
        "TCPConnector whose connections are aiohttp's own protocol on an in-memory transport answering a canned 200. "
        "Idle and baseline alternate each repeat (CPU time of this thread, medians); captured: "
        f"{CALLS_PER_EXECUTION} calls per execution (median of repeats); collector: its mean CPU time per captured "
        "call over all repeats, full collections included; events/call read back from a sealed probe bundle. "
        "OpenTelemetry: its requests, aiohttp-client (trace config on its own session) and redis instrumentations "
        "with an SDK TracerProvider and an in-memory exporter, FluxRun shut down, switched on and off around its loop, "
        "against the same client uninstrumented in the same repeat",
        caption_justify="left",
    )
    for column in ("client", "baseline µs", "FluxRun idle added ns", "idle target", "FluxRun captured added µs",
                   "captured target", "collector µs (mean)", "events/call", "OpenTelemetry added µs",
                   "spans/call"):  # fmt: skip
        table.add_column(column, justify="left" if column == "client" else "right")
    for name in result["kinds"]:
        idle, captured = result["idle_added_ns"][name], result["capturing_added_us"][name]
        otel = result["otel"].get(name)
        table.add_row(
            escape(name),
            f"{result['baseline_ns'][name] / 1000:.2f}",
            f"{idle:+.0f}",
            f"< {IDLE_TARGET_NS} {verdict(idle < IDLE_TARGET_NS)}",
            f"{captured:.2f}",
            f"< {CLIENT_CAPTURE_TARGET_US} {verdict(captured < CLIENT_CAPTURE_TARGET_US)}",
            collector_cell(result, name),
            f"{result['events_per_call'].get(name, math.nan):g}",
            f"{otel['added_us']:.2f}" if otel else "",
            f"{otel['spans_per_call']:g}" if otel else "",
        )
    return table


def client_targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    targets = []
    for name in result["kinds"]:
        for label, value, limit, unit in (
            ("idle added", result["idle_added_ns"][name], IDLE_TARGET_NS, "ns"),
            ("capturing added", result["capturing_added_us"][name], CLIENT_CAPTURE_TARGET_US, "µs"),
        ):
            targets.append(
                {"target": f"{label}, {name} < {limit} {unit}", "measured": value, "unit": unit, "pass": value < limit}
            )
    return targets


# ------------------------------------------------------------------------------------------------------
# Section 7 (`--instructions`): instructions per request and per call, counted by callgrind
# ------------------------------------------------------------------------------------------------------

# callgrind counts only inside `sys.call_tracing` (its C function, `sys_call_tracing` in CPython's symbols,
# which nothing else here calls) and writes one dump per call, so each measured phase is exactly one dump
CALLGRIND_TOGGLE = "sys_call_tracing"
INSTRUCTION_ASGI_REQUESTS = (40, 240)  # requests per phase; per request = difference / 200
INSTRUCTION_ASGI_WARMUP = 60
INSTRUCTION_CALLS = (32, 160)  # client calls per phase (the captured phases are one execution each)
INSTRUCTION_WARMUP = 24


def counted(function: Callable[..., Any], *args: Any) -> Any:
    """Run `function(*args)` as one callgrind phase (one dump of the instructions it took).

    Every phase starts from the same collector state: a full collection, then everything alive moved to the
    permanent generation (`gc.freeze`), so a collection inside the phase traverses only what the phase made.
    Without it, whether a full collection of the whole heap (the app, FastAPI, the clients: millions of
    instructions) lands in the short or the long loop decides the figure, and two trees that allocate a few
    objects more or less per call differ by thousands of instructions per call for no cost of their own."""
    gc.collect()
    gc.freeze()
    try:
        return sys.call_tracing(function, args)
    finally:
        gc.unfreeze()


def instructions_child_asgi(args: argparse.Namespace) -> dict[str, Any]:
    """Under callgrind: the ASGI request loop of section 3, `--instructions-child asgi:CONFIG`."""
    config = CONFIG_BY_NAME[args.instructions_child.partition(":")[2]]
    app, _on_batch, finish = SETUPS[config.sdk](config, args)

    async def requests(n: int) -> None:
        for _ in range(n):
            await app({**HTTP_SCOPE, "headers": list(HTTP_SCOPE["headers"]), "state": {}}, _receive, _discard)

    loop = event_loop()
    loop.run_until_complete(requests(INSTRUCTION_ASGI_WARMUP))
    phases = []
    for n in INSTRUCTION_ASGI_REQUESTS:
        counted(loop.run_until_complete, requests(n))
        phases.append({"name": config.name, "n": n})
    notes = finish()
    return {"phases": phases, "notes": {**notes, "fluxrun_file": fluxrun.__file__}}


async def _receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _discard(message: dict[str, Any]) -> None:
    pass


def instructions_child_clients(args: argparse.Namespace) -> dict[str, Any]:
    """Under callgrind: section 5's and 6's calls, `--instructions-child clients`. Per kind three modes:
    baseline (FluxRun shut down), idle (init done) and captured (inside one `fluxrun.capture`d execution
    per phase), each counted at two loop lengths so that the loop's own fixed cost cancels."""
    workdir = Path(args.workdir)
    bundles = workdir / f"bundles-instructions-{os.getpid()}"
    console = Console(file=sys.stderr)
    db = DbClients(workdir)
    http = HttpClients(console)
    kinds = (*db.kinds, *http.kinds)

    def start() -> None:
        fluxrun.init(directory=bundles, capture_key=args.capture_key, sample_rate=0.0)
        db.fluxrun_started()

    def stop() -> None:
        fluxrun.shutdown()
        db.fluxrun_stopped()

    phases: list[dict[str, Any]] = []

    def measure(mode: str, loop: Callable[[int], Any], kind: Kind, captured: bool = False) -> None:
        function = fluxrun.capture(name=f"bench {kind.name}")(loop) if captured else loop
        timed_run(function, kind.is_async, INSTRUCTION_WARMUP)
        for n in INSTRUCTION_CALLS:
            counted(timed_run, function, kind.is_async, n)
            phases.append({"name": kind.name, "mode": mode, "n": n})

    try:
        stop()
        for kind in kinds:
            measure("baseline", compile_loop(kind.baseline_stmt or kind.stmt, kind.is_async), kind)
        start()
        for kind in kinds:
            measure("idle", compile_loop(kind.stmt, kind.is_async), kind)
        for kind in kinds:
            measure("captured", compile_loop(kind.stmt, kind.is_async), kind, captured=True)
    finally:
        stop()
        http.close()
        db.close()
    return {"phases": phases, "notes": {"db": db.note, "clients": http.note, "fluxrun_file": fluxrun.__file__}}


def instructions_child_main(args: argparse.Namespace) -> int:
    """`--instructions-child WHAT`: run under callgrind, print the phases in dump order as one JSON line."""
    if args.instructions_child == "clients":
        result = instructions_child_clients(args)
    else:
        result = instructions_child_asgi(args)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


def callgrind_dumps(prefix: Path) -> list[int]:
    """The instructions of each dump `prefix.1`, `prefix.2`, ... in order (the `summary:` line of each)."""
    counts = []
    index = 1
    while (path := Path(f"{prefix}.{index}")).exists():
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("summary:"):
                counts.append(int(line.split()[1]))
                break
        else:
            raise RuntimeError(f"no summary line in {path}")
        index += 1
    return counts


def run_callgrind(
    what: str, workdir: Path, keys: tuple[Path, Path], env: dict[str, str] | None = None
) -> dict[str, Any]:
    """One child under `valgrind --tool=callgrind`; its phases, each with the instructions it took."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise RuntimeError("valgrind is not installed (Debian: apt-get install -y valgrind)")
    tag = what.replace(":", "-") + ("-rev" if env else "")
    prefix = workdir / f"callgrind-{tag}"
    command = [
        valgrind,
        "--tool=callgrind",
        "--collect-atstart=no",
        f"--toggle-collect={CALLGRIND_TOGGLE}",
        f"--dump-after={CALLGRIND_TOGGLE}",
        f"--callgrind-out-file={prefix}",
        sys.executable,
        str(Path(__file__).resolve()),
        "--instructions-child",
        what,
        "--workdir",
        str(workdir),
        "--capture-key",
        str(keys[0]),
        "--replay-key",
        str(keys[1]),
        "--round",
        "0",
    ]
    child_env = {**(env if env is not None else os.environ), "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False, env=child_env)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"callgrind --instructions-child {what} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    counts = callgrind_dumps(prefix)
    if len(counts) != len(result["phases"]) or not all(counts):
        raise RuntimeError(
            f"callgrind wrote {len(counts)} dumps for {len(result['phases'])} phases of {what} (is the symbol "
            f"{CALLGRIND_TOGGLE} in this Python's binary?)"
        )
    for phase, count in zip(result["phases"], counts, strict=True):
        phase["instructions"] = count
    return result


def per_iteration(phases: list[dict[str, Any]]) -> float:
    """Instructions per request or call: the difference between the two loop lengths, so fixed costs cancel."""
    short, long = sorted(phases, key=lambda p: p["n"])
    return (long["instructions"] - short["instructions"]) / (long["n"] - short["n"])


def measure_instructions(
    workdir: Path,
    keys: tuple[Path, Path],
    console: Console,
    asgi: bool,
    clients: bool,
    baseline: Baseline | None = None,
) -> dict[str, Any]:
    """Section 7: the callgrind children (two at a time), this tree's and, with `--baseline`, REV's."""
    jobs: dict[str, tuple[str, dict[str, str] | None]] = {}
    rev_env = None
    if baseline is not None:
        path = os.pathsep.join(p for p in (str(baseline.src), os.environ.get("PYTHONPATH", "")) if p)
        rev_env = {**os.environ, "PYTHONPATH": path}
    if asgi:
        jobs["asgi plain"] = ("asgi:plain", None)
        jobs["asgi fluxrun"] = ("asgi:fluxrun", None)
        if rev_env is not None:
            jobs["asgi fluxrun rev"] = ("asgi:fluxrun", rev_env)
    if clients:
        jobs["clients"] = ("clients", None)
        if rev_env is not None:
            jobs["clients rev"] = ("clients", rev_env)
    console.print(f"  callgrind: {len(jobs)} children, two at a time (each starts in about a minute) ...")
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run_callgrind, what, workdir, keys, env) for name, (what, env) in jobs.items()}
        done = {name: future.result() for name, future in futures.items()}
    if baseline is not None:
        for name in ("asgi fluxrun rev", "clients rev"):
            if name in done and not done[name]["notes"]["fluxrun_file"].startswith(str(baseline.src)):
                raise RuntimeError(f"{name} imported FluxRun from {done[name]['notes']['fluxrun_file']}")
    results: dict[str, Any] = {"rev": baseline.commit if baseline else None}
    if asgi:
        plain = per_iteration(done["asgi plain"]["phases"])
        ours = per_iteration(done["asgi fluxrun"]["phases"])
        results["asgi"] = {"plain": plain, "fluxrun": ours, "added": ours - plain}
        if "asgi fluxrun rev" in done:
            theirs = per_iteration(done["asgi fluxrun rev"]["phases"])
            results["asgi"].update({"fluxrun_rev": theirs, "added_rev": theirs - plain})
            results["asgi"]["ratio_added"] = ab_ratio(ours - plain, theirs - plain)
    if clients:
        results["clients"] = {
            tree: client_instructions(done[name]["phases"])
            for tree, name in (("this", "clients"), ("rev", "clients rev"))
            if name in done
        }
        results["clients_note"] = f"{done['clients']['notes']['db']}; {done['clients']['notes']['clients']}"
    return results


def client_instructions(phases: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """{kind: {baseline, idle_added, captured_added}} in instructions per call."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for phase in phases:
        grouped.setdefault((phase["name"], phase["mode"]), []).append(phase)
    names = list(dict.fromkeys(phase["name"] for phase in phases))
    out = {}
    for name in names:
        base = per_iteration(grouped[(name, "baseline")])
        out[name] = {
            "baseline": base,
            "idle_added": per_iteration(grouped[(name, "idle")]) - base,
            "captured_added": per_iteration(grouped[(name, "captured")]) - base,
        }
    return out


def instructions_tables(result: dict[str, Any]) -> list[Table]:
    tables = []
    rev = result.get("rev")
    if "asgi" in result:
        asgi = result["asgi"]
        table = Table(
            title="7. Instructions per ASGI request (callgrind; section 3's app and request loop)",
            title_justify="left",
            caption=f"Each configuration in its own process under valgrind --tool=callgrind, counted only inside the "
            f"measured loops: {INSTRUCTION_ASGI_REQUESTS[1]} minus {INSTRUCTION_ASGI_REQUESTS[0]} requests after "
            f"{INSTRUCTION_ASGI_WARMUP} warm-up, divided by the difference. Deterministic from run to run "
            "(PYTHONHASHSEED=0), unlike the timings on a shared machine.",
            caption_justify="left",
        )
        for column in ("configuration", "instructions/request", "added", "ratio of added"):
            table.add_column(column, justify="left" if column == "configuration" else "right")
        table.add_row("(a) plain FastAPI, no SDK", f"{asgi['plain']:,.0f}", "baseline", "")
        ratio = f"{asgi['ratio_added']:.3f}x of (b')" if "ratio_added" in asgi else ""
        table.add_row("(b) FluxRun middleware, this tree", f"{asgi['fluxrun']:,.0f}", f"{asgi['added']:+,.0f}", ratio)
        if "fluxrun_rev" in asgi:
            table.add_row(
                f"(b') FluxRun middleware at {rev}", f"{asgi['fluxrun_rev']:,.0f}", f"{asgi['added_rev']:+,.0f}", ""
            )
        tables.append(table)
    if "clients" in result:
        table = Table(
            title="7. Instructions per client call (callgrind; sections 5 and 6's calls)",
            title_justify="left",
            caption=f"{result['clients_note']}. One process under callgrind: each loop counted at "
            f"{INSTRUCTION_CALLS[1]} and {INSTRUCTION_CALLS[0]} calls, per call = the difference / "
            f"{INSTRUCTION_CALLS[1] - INSTRUCTION_CALLS[0]}; baseline with FluxRun shut down, idle after init, "
            "captured inside one fluxrun.capture'd execution per loop."
            + (f" {rev}: the same child importing that revision's FluxRun." if rev else ""),
            caption_justify="left",
        )
        columns = ["client", "baseline instr/call", "idle added", "captured added"]
        if "rev" in result["clients"]:
            columns += [f"idle added at {rev}", f"captured added at {rev}"]
        for column in columns:
            table.add_column(column, justify="left" if column == "client" else "right")
        ours, theirs = result["clients"]["this"], result["clients"].get("rev", {})
        for name, row in ours.items():
            cells = [
                escape(name),
                f"{row['baseline']:,.0f}",
                f"{row['idle_added']:+,.0f}",
                f"{row['captured_added']:+,.0f}",
            ]
            if "rev" in result["clients"]:
                other = theirs.get(name)
                cells += [f"{other['idle_added']:+,.0f}", f"{other['captured_added']:+,.0f}"] if other else ["", ""]
            table.add_row(*cells)
        tables.append(table)
    return tables


# ------------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------------


def check_installed(console: Console) -> None:
    """Say so if the interceptors are not where the measurements assume them to be."""
    if not hasattr(time.time, "__wrapped__"):
        console.print("[red]warning: time.time is not patched after fluxrun.init[/red]")
    if globals()["datetime"].__name__ != "CapturedDatetime":
        console.print(
            "[red]warning: this module's `datetime` was not rebound; datetime.now is measured unpatched[/red]"
        )


def results_baseline(args: argparse.Namespace, workdir: Path) -> Baseline | None:
    return checkout_baseline(args.baseline, workdir) if args.baseline else None


def report_load(results: dict[str, Any], console: Console) -> None:
    results["loadavg_end"] = os.getloadavg()[0]
    cpus = os.cpu_count() or 1
    busy = max(results["loadavg_start"], results["loadavg_end"]) > cpus
    console.print(
        f"1-minute load average {results['loadavg_start']:.2f} at start, {results['loadavg_end']:.2f} at end, "
        f"on {cpus} CPUs" + (" (above the CPU count: other processes were competing for them)" if busy else "")
    )


def run_all(
    settings: Settings,
    workdir: Path,
    keys: tuple[Path, Path],
    console: Console,
    ab: Baseline | None = None,
    instructions: bool = False,
) -> dict[str, Any]:
    capture_key, replay_key = keys
    results: dict[str, Any] = {
        "mode": "quick" if is_quick(settings) else "full",
        "python": platform.python_version(),
        "fluxrun": fluxrun.__version__,
        "events_per_request": EVENTS_PER_REQUEST,
        "loadavg_start": os.getloadavg()[0],  # a shared machine: how busy it was, to read the figures by
    }

    console.print("[bold]1-2.[/bold] per-call cost: baseline (FluxRun shut down) and idle (init done), alternating ...")
    bundles = workdir / "bundles"

    def start() -> None:
        fluxrun.init(directory=bundles, capture_key=capture_key, sample_rate=0.0)

    baseline, idle = measure_baseline_and_idle(settings, start, fluxrun.shutdown)
    try:
        check_installed(console)
        console.print(per_call_table(baseline, idle))
        console.print("  capturing ...")
        capturing = measure_capturing(settings, idle)
        events = probe_events_per_call(bundles, replay_key)
        console.print(capture_table(baseline, capturing, events))
    finally:
        fluxrun.shutdown()
    results["baseline_ns"] = baseline
    results["idle_ns"] = idle
    results["idle_added_ns"] = {k: idle[k] - baseline[k] for k in idle}
    results["capturing_ns"] = capturing
    results["capturing_added_us"] = {k: (capturing[k] - baseline[k]) / 1000 for k in capturing}
    results["capturing_events_per_call"] = events

    console.print("[bold]5.[/bold] database client, beside OpenTelemetry's SQLAlchemy instrumentation ...")
    results["db"] = measure_db(settings, workdir, start, console)
    console.print(db_table(results["db"]))

    console.print("[bold]6.[/bold] HTTP and Redis clients, beside OpenTelemetry's instrumentations ...")
    results["clients"] = measure_clients(settings, start, bundles, replay_key, console)
    console.print(clients_table(results["clients"]))

    console.print("[bold]4.[/bold] seal and open ...")
    results["seal"] = measure_seal(settings, capture_key, replay_key)
    console.print(seal_table(results["seal"]))

    console.print("[bold]3.[/bold] ASGI requests, one subprocess per configuration ...")
    results["asgi"] = measure_asgi(settings, workdir, keys, console, ab)
    console.print(asgi_table(results["asgi"], settings))
    if ab_line(results["asgi"]):
        console.print(ab_line(results["asgi"]))

    if instructions:
        console.print("[bold]7.[/bold] instructions per request and per call (callgrind) ...")
        results["instructions"] = measure_instructions(workdir, keys, console, asgi=True, clients=True, baseline=ab)
        for table in instructions_tables(results["instructions"]):
            console.print(table)

    results["targets"] = collect_targets(results)
    console.print(targets_table(results["targets"], is_quick(settings)))
    report_load(results, console)
    return results


def db_targets(db: dict[str, Any]) -> list[dict[str, Any]]:
    targets = []
    for name in db["kinds"]:
        for label, value, limit, unit in (
            ("idle added", db["idle_added_ns"][name], IDLE_TARGET_NS, "ns"),
            ("capturing added", db["capturing_added_us"][name], DB_CAPTURE_TARGET_US, "µs"),
        ):
            targets.append(
                {"target": f"{label}, {name} < {limit} {unit}", "measured": value, "unit": unit, "pass": value < limit}
            )
    return targets


def run_only(
    settings: Settings, workdir: Path, keys: tuple[Path, Path], console: Console, args: argparse.Namespace
) -> dict[str, Any]:
    """Some sections alone (`--only-db`, `--only-clients`, `--only-asgi`, combinable), with their targets."""
    bundles = workdir / "bundles"

    def start() -> None:
        fluxrun.init(directory=bundles, capture_key=keys[0], sample_rate=0.0)

    results: dict[str, Any] = {
        "mode": "quick" if is_quick(settings) else "full",
        "python": platform.python_version(),
        "fluxrun": fluxrun.__version__,
        "loadavg_start": os.getloadavg()[0],
    }
    targets: list[dict[str, Any]] = []
    baseline = results_baseline(args, workdir)
    timings = not args.instructions_only
    if args.only_db and timings:
        console.print("[bold]5.[/bold] database client, beside OpenTelemetry's SQLAlchemy instrumentation ...")
        results["db"] = measure_db(settings, workdir, start, console)
        console.print(db_table(results["db"]))
        targets.extend(db_targets(results["db"]))
    if args.only_clients and timings:
        console.print("[bold]6.[/bold] HTTP and Redis clients, beside OpenTelemetry's instrumentations ...")
        results["clients"] = measure_clients(settings, start, bundles, keys[1], console)
        console.print(clients_table(results["clients"]))
        targets.extend(client_targets(results["clients"]))
    if args.only_asgi and timings:
        console.print("[bold]3.[/bold] ASGI requests, one subprocess per configuration ...")
        results["asgi"] = measure_asgi(settings, workdir, keys, console, baseline=baseline, ab_only=args.ab_only)
        console.print(asgi_table(results["asgi"], settings))
        if ab_line(results["asgi"]):
            console.print(ab_line(results["asgi"]))
        targets.extend(asgi_targets(results["asgi"]))
    if args.instructions:
        console.print("[bold]7.[/bold] instructions per request and per call (callgrind) ...")
        results["instructions"] = measure_instructions(
            workdir, keys, console, asgi=args.only_asgi, clients=args.only_db or args.only_clients, baseline=baseline
        )
        for table in instructions_tables(results["instructions"]):
            console.print(table)
    results["targets"] = targets
    console.print(targets_table(targets, is_quick(settings)))
    report_load(results, console)
    return results


def run_processes(settings: Settings, workdir: Path, console: Console, args: argparse.Namespace) -> dict[str, Any]:
    """`--processes N`: sections 5 and 6 in N child processes, one after another, each with its own hash seed,
    and the median of their figures. A process's hash seed and memory layout move a client's captured cost by
    more than the repeats inside one process do (aiohttp GET: 18.5 to 23 µs over PYTHONHASHSEED 0 to 7, each
    steady within 1 µs; requests: 9.9 and 25.9 µs in two runs), so one process's figure is one draw."""
    if args.processes < 2 or args.only_asgi or args.instructions or not (args.only_db or args.only_clients):
        raise SystemExit("--processes N (N >= 2) goes with --only-db and/or --only-clients alone")
    flags = [flag for flag, on in (("--only-db", args.only_db), ("--only-clients", args.only_clients)) if on]
    flags += ["--quick"] if args.quick else []
    flags += ["--repeats", str(settings.repeats)]
    runs: list[dict[str, Any]] = []
    console.print(f"sections 5 and 6 in {args.processes} processes, PYTHONHASHSEED 0..{args.processes - 1} ...")
    for seed in range(args.processes):
        out = workdir / f"process-{seed}.json"
        env = {**os.environ, "PYTHONHASHSEED": str(seed)}
        done = subprocess.run(
            [sys.executable, __file__, *flags, "--json", str(out)], env=env, capture_output=True, text=True
        )
        if done.returncode or not out.exists():
            raise SystemExit(f"process {seed} ({' '.join(flags)}) failed ({done.returncode}):\n{done.stderr[-3000:]}")
        runs.append(json.loads(out.read_text()))
        console.print(f"  process {seed + 1}/{args.processes}: {runs[-1]['elapsed_s']:.0f} s")
    results: dict[str, Any] = {
        "mode": runs[0]["mode"],
        "python": platform.python_version(),
        "fluxrun": fluxrun.__version__,
        "loadavg_start": runs[0]["loadavg_start"],
        "processes": args.processes,
    }
    targets: list[dict[str, Any]] = []
    for section, table, targets_of in (("db", db_table, db_targets), ("clients", clients_table, client_targets)):
        parts = [run[section] for run in runs if section in run]
        if not parts:
            continue
        results[section] = median_of(parts)
        results[section]["note"] = f"median of {len(parts)} processes; {parts[0]['note']}"
        results[f"{section}_by_process"] = parts
        console.print(table(results[section]))
        console.print(spread_table(section, parts))
        targets.extend(targets_of(results[section]))
    results["targets"] = targets
    console.print(targets_table(targets, is_quick(settings)))
    report_load(results, console)
    return results


def median_of(parts: list[Any]) -> Any:
    """The element-wise median of several processes' results of one section (numbers; the rest from the first)."""
    first = parts[0]
    if isinstance(first, dict):
        return {key: median_of([part[key] for part in parts if key in part]) for key in first}
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return statistics.median(parts)
    return first


def spread_table(section: str, parts: list[dict[str, Any]]) -> Table:
    """Each process's idle and captured figure per call, so the spread behind each median is in view."""
    table = Table(title=f"{'5' if section == 'db' else '6'}. per process (PYTHONHASHSEED 0..{len(parts) - 1})")
    table.add_column("client")
    table.add_column("FluxRun idle added ns, by process", justify="right")
    table.add_column("FluxRun captured added µs, by process", justify="right")
    for kind in parts[0]["kinds"]:
        table.add_row(
            kind,
            " ".join(f"{part['idle_added_ns'][kind]:+.0f}" for part in parts),
            " ".join(f"{part['capturing_added_us'][kind]:.1f}" for part in parts),
        )
    return table


def parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fast smoke run (few samples, noisy numbers)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--only-db", action="store_true", help="run section 5 (the database client) only")
    parser.add_argument("--only-clients", action="store_true", help="run section 6 (HTTP and Redis clients) only")
    parser.add_argument("--only-asgi", action="store_true", help="run section 3 (ASGI requests) only")
    parser.add_argument(
        "--repeats",
        type=int,
        metavar="N",
        help="sections 1, 2, 5 and 6: N repeats per measurement instead of 7 (more repeats, steadier medians)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        help="section 3: N interleaved rounds of the same size each (more rounds, steadier medians)",
    )
    parser.add_argument(
        "--ab-only",
        action="store_true",
        help="with --baseline: section 3 runs only the plain app and the two FluxRun middlewares",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="section 3 also runs the FluxRun middleware of git revision REV (checked out with git archive), "
        "interleaved in the same rounds, and prints the ratio of the two added p50s",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count instructions per request/call under valgrind's callgrind (section 7) for the sections "
        "run (ASGI: plain and FluxRun apps, and --baseline's; db and clients: baseline, idle and captured)",
    )
    parser.add_argument(
        "--instructions-only",
        action="store_true",
        help="with --instructions: only the callgrind counts, no timings",
    )
    parser.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="sections 5 and 6 (with --only-db/--only-clients): run them in N processes one after another, "
        "PYTHONHASHSEED 0..N-1, and report the median of the processes' figures",
    )
    internal = parser.add_argument_group("internal (one ASGI configuration in a subprocess)")
    internal.add_argument("--config", choices=sorted(CONFIG_BY_NAME), help=argparse.SUPPRESS)
    internal.add_argument("--workdir", help=argparse.SUPPRESS)
    internal.add_argument("--capture-key", help=argparse.SUPPRESS)
    internal.add_argument("--replay-key", help=argparse.SUPPRESS)
    internal.add_argument("--requests", type=int, default=1000, help=argparse.SUPPRESS)
    internal.add_argument("--warmup", type=int, default=100, help=argparse.SUPPRESS)
    internal.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    internal.add_argument("--instructions-child", help=argparse.SUPPRESS)
    return parser.parse_args(list(argv) if argv is not None else None)


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    if args.config:
        return child_main(args)
    if args.instructions_child:
        return instructions_child_main(args)
    settings = QUICK if args.quick else FULL
    if args.repeats:
        settings = dataclasses.replace(settings, repeats=max(1, args.repeats))
    if args.rounds:
        per_round = math.ceil(settings.asgi_requests / settings.asgi_rounds)
        settings = dataclasses.replace(settings, asgi_rounds=args.rounds, asgi_requests=per_round * args.rounds)
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(
        f"FluxRun {fluxrun.__version__} capture benchmark ({'quick' if args.quick else 'full'}), "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    started = now_ns()
    workdir = Path(tempfile.mkdtemp(prefix="fluxrun-bench-"))
    try:
        keys = generate_keys(workdir / "keys")
        if args.instructions_only and not args.instructions:
            raise SystemExit("--instructions-only goes with --instructions")
        if args.instructions_only and not (args.only_db or args.only_clients or args.only_asgi):
            args.only_db = args.only_clients = args.only_asgi = True
        if args.processes:
            results = run_processes(settings, workdir, console, args)
        elif args.only_db or args.only_clients or args.only_asgi:
            results = run_only(settings, workdir, keys, console, args)
        else:
            results = run_all(
                settings, workdir, keys, console, results_baseline(args, workdir), instructions=args.instructions
            )
    finally:
        fluxrun.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
        for checkout in _checkouts:
            shutil.rmtree(checkout, ignore_errors=True)
        if _event_loop is not None:
            _event_loop.close()
    results["elapsed_s"] = (now_ns() - started) / 1e9
    console.print(f"done in {results['elapsed_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
        console.print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
