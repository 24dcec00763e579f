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
4. Seal and open time (`fluxrun.bundle.Sealer.seal` / `open_bundle`) for payloads of 4 KiB, 16 KiB and
   1 MiB (orjson length), shaped like a real payload: http events with JSON bodies, env/time/log events.

A final table lists each target, the measured value and pass/fail.

Run (with the project installed: `pip install -e '.[test,bench]'`):

    python benchmarks/capture.py                 # full run, about 2 minutes on 2 cores
    python benchmarks/capture.py --quick         # smoke run, a few seconds, noisy numbers
    python benchmarks/capture.py --json out.json # also write the results as JSON

Keys and bundles live in a temporary directory that is removed at the end. The exit status is 0 even
when a target is missed: this is a measurement, not a gate.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import math
import os
import platform
import random
import shutil
import socket
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
    settings: Settings, start: Callable[[], None], stop: Callable[[], None]
) -> tuple[dict[str, float], dict[str, float]]:
    """ns/call of each kind before `fluxrun.init` (baseline) and after it (idle), in alternation: every
    repeat times all baselines with FluxRun shut down, then all idle loops with it started again, so both
    see the same machine. Returns with FluxRun started."""
    runs: dict[str, tuple[Callable[[int], int], Callable[[int], int]]] = {}
    for kind in KINDS:
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
    idle = {name: statistics.median(values[1]) for name, values in samples.items()}
    return baseline, idle


def measure_capturing(settings: Settings, idle: dict[str, float]) -> dict[str, float]:
    """ns/call of each kind inside captured executions of CALLS_PER_EXECUTION calls that end normally.

    Each repeat times the captured executions and, right after, the same calls uncaptured (idle), so both
    see the same machine; the result is table 1's idle figure plus the difference measured side by side.
    """
    results = {}
    for kind in KINDS:
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
        for _ in range(settings.repeats):
            differences.append(run(executions) - run(executions, uncaptured))
        added = statistics.median(differences) / executions / CALLS_PER_EXECUTION
        results[kind.name] = idle[kind.name] + added
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


def probe_events_per_call(bundles: Path, replay_key: Path) -> dict[str, float]:
    """Events one call of each kind records, read back from a sealed probe bundle (NaN if none was written)."""
    key = load_replay_key(replay_key)
    results = {}
    for kind in KINDS:
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
CONFIG_BY_NAME = {config.name: config for config in ASGI_CONFIGS}
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
    result["config"] = config.name
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


def run_child(
    config: AsgiConfig, requests: int, settings: Settings, workdir: Path, keys: tuple[Path, Path], round_: int
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
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"--config {config.name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of a sorted list."""
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def measure_asgi(settings: Settings, workdir: Path, keys: tuple[Path, Path], console: Console) -> dict[str, Any]:
    """Run every configuration in its own subprocess, in interleaved rounds; pool each one's latencies.

    The load of a shared machine drifts between rounds, so an "added" figure is the median over rounds of
    the difference to its baseline within the same round (pooled percentiles would mostly say which
    configuration happened to run in the busier round); p50/p99 themselves are of the pooled requests."""
    per_round = math.ceil(settings.asgi_requests / settings.asgi_rounds)
    pooled: dict[str, list[int]] = {config.name: [] for config in ASGI_CONFIGS}
    pooled_cpu: dict[str, list[int]] = {config.name: [] for config in ASGI_CONFIGS}
    details: dict[str, dict[str, Any]] = {
        config.name: {"statuses": Counter(), "errors": Counter(), "notes": [], "round_p50_us": [], "rounds": []}
        for config in ASGI_CONFIGS
    }
    for round_ in range(settings.asgi_rounds):
        for config in ASGI_CONFIGS:
            console.print(f"  [dim]round {round_ + 1}/{settings.asgi_rounds}: {config.name}[/dim]")
            result = run_child(config, per_round, settings, workdir, keys, round_)
            pooled[config.name].extend(result["latencies_ns"])
            pooled_cpu[config.name].extend(result["cpu_ns"])
            details[config.name]["statuses"].update({int(k): v for k, v in result["statuses"].items()})
            details[config.name]["errors"].update(result["errors"])
            details[config.name]["notes"].append(result["notes"])
            details[config.name]["round_p50_us"].append(percentile(sorted(result["latencies_ns"]), 0.5) / 1000)
            wall, cpu = sorted(result["latencies_ns"]), sorted(result["cpu_ns"])
            details[config.name]["rounds"].append(
                {
                    "p50_us": percentile(wall, 0.50) / 1000,
                    "p99_us": percentile(wall, 0.99) / 1000,
                    "cpu_p50_us": percentile(cpu, 0.50) / 1000,
                    "cpu_p99_us": percentile(cpu, 0.99) / 1000,
                }
            )
    results = {}
    for config in ASGI_CONFIGS:
        latencies = sorted(ns / 1000 for ns in pooled[config.name])
        cpu = sorted(ns / 1000 for ns in pooled_cpu[config.name])
        results[config.name] = {
            "label": config.label,
            "requests": len(latencies),
            "p50_us": percentile(latencies, 0.50),
            "p99_us": percentile(latencies, 0.99),
            "cpu_p50_us": percentile(cpu, 0.50),
            "cpu_p99_us": percentile(cpu, 0.99),
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


def verdict(value: float, limit: float) -> str:
    return "[green]pass[/green]" if value < limit else "[red]FAIL[/red]"


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
        target = f"< {IDLE_TARGET_NS} ns {verdict(added, IDLE_TARGET_NS)}" if kind.group in IDLE_TARGET_GROUPS else ""
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
        target = (
            f"< {CAPTURE_HTTP_TARGET_US} µs {verdict(added_us, CAPTURE_HTTP_TARGET_US)}" if kind.group == "http" else ""
        )
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
        has_base = "added_p50_us" in result
        target = ""
        if name == "fluxrun":
            target = (
                f"p50 < {ASGI_P50_TARGET_US} {verdict(result['added_p50_us'], ASGI_P50_TARGET_US)}, "
                f"p99 < {ASGI_P99_TARGET_US} {verdict(result['added_p99_us'], ASGI_P99_TARGET_US)}"
            )
        elif name == "fluxrun_ship_down":
            target = f"p99 < {SHIP_DOWN_P99_TARGET_US} {verdict(result['added_p99_us'], SHIP_DOWN_P99_TARGET_US)}"
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
            f"seal < {SEAL_16K_TARGET_US} µs {verdict(row['seal_us'], SEAL_16K_TARGET_US)}"
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
    asgi = results["asgi"]["fluxrun"]
    add("ASGI FluxRun added p50", asgi["added_p50_us"], ASGI_P50_TARGET_US, "µs")
    add("ASGI FluxRun added p99", asgi["added_p99_us"], ASGI_P99_TARGET_US, "µs")
    add("ASGI FluxRun added p50, CPU time", asgi["added_cpu_p50_us"], ASGI_P50_TARGET_US, "µs")
    add("ASGI FluxRun added p99, CPU time", asgi["added_cpu_p99_us"], ASGI_P99_TARGET_US, "µs")
    down = results["asgi"]["fluxrun_ship_down"]
    add("ASGI shipping on, server down, added p99", down["added_p99_us"], SHIP_DOWN_P99_TARGET_US, "µs")
    seal_16k = next(row for row in results["seal"] if row["label"] == "16 KiB")
    add("seal 16 KiB", seal_16k["seal_us"], SEAL_16K_TARGET_US, "µs")
    return targets


def targets_table(targets: list[dict[str, Any]], quick: bool) -> Table:
    title = "Targets" + (" (quick mode: few samples, noisy)" if quick else "")
    table = Table(title=title, title_justify="left")
    for column in ("target", "measured", "result"):
        table.add_column(column, justify="right" if column == "measured" else "left")
    for target in targets:
        table.add_row(
            escape(target["target"]),
            f"{target['measured']:.2f} {target['unit']}",
            "[green]pass[/green]" if target["pass"] else "[red]FAIL[/red]",
        )
    return table


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


def run_all(settings: Settings, workdir: Path, keys: tuple[Path, Path], console: Console) -> dict[str, Any]:
    capture_key, replay_key = keys
    results: dict[str, Any] = {
        "mode": "quick" if settings is QUICK else "full",
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

    console.print("[bold]4.[/bold] seal and open ...")
    results["seal"] = measure_seal(settings, capture_key, replay_key)
    console.print(seal_table(results["seal"]))

    console.print("[bold]3.[/bold] ASGI requests, one subprocess per configuration ...")
    results["asgi"] = measure_asgi(settings, workdir, keys, console)
    console.print(asgi_table(results["asgi"], settings))

    results["targets"] = collect_targets(results)
    console.print(targets_table(results["targets"], settings is QUICK))
    results["loadavg_end"] = os.getloadavg()[0]
    cpus = os.cpu_count() or 1
    busy = max(results["loadavg_start"], results["loadavg_end"]) > cpus
    console.print(
        f"1-minute load average {results['loadavg_start']:.2f} at start, {results['loadavg_end']:.2f} at end, "
        f"on {cpus} CPUs" + (" (above the CPU count: other processes were competing for them)" if busy else "")
    )
    return results


def parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fast smoke run (few samples, noisy numbers)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH")
    internal = parser.add_argument_group("internal (one ASGI configuration in a subprocess)")
    internal.add_argument("--config", choices=sorted(CONFIG_BY_NAME), help=argparse.SUPPRESS)
    internal.add_argument("--workdir", help=argparse.SUPPRESS)
    internal.add_argument("--capture-key", help=argparse.SUPPRESS)
    internal.add_argument("--replay-key", help=argparse.SUPPRESS)
    internal.add_argument("--requests", type=int, default=1000, help=argparse.SUPPRESS)
    internal.add_argument("--warmup", type=int, default=100, help=argparse.SUPPRESS)
    internal.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(list(argv) if argv is not None else None)


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    if args.config:
        return child_main(args)
    settings = QUICK if args.quick else FULL
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(
        f"FluxRun {fluxrun.__version__} capture benchmark ({'quick' if args.quick else 'full'}), "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    started = now_ns()
    workdir = Path(tempfile.mkdtemp(prefix="fluxrun-bench-"))
    try:
        keys = generate_keys(workdir / "keys")
        results = run_all(settings, workdir, keys, console)
    finally:
        fluxrun.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
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
