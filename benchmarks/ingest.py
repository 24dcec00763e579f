"""FluxRun server ingest and query speed, measured against baselines taken in the same run.

Everything talks to a real `fluxrun server` (uvicorn, started as a subprocess on 127.0.0.1 with
`FLUXRUN_SERVER_*` variables, as tests/server/conftest.py does) over loopback HTTP. Workspaces, projects,
signing keys, ingest tokens and API keys are made with the same `fluxrun_server.admin` functions that
`fluxrun server admin ...` calls, on the server's own database, before the server starts.

Sections:

1. Raw fsync rate of the disk the server writes to: a loop of 4 KiB `os.write` (O_APPEND) + `os.fsync`
   on a file in the server's data folder. Median and p99 µs per op, and ops/s: the ceiling for durable
   acks if every request paid its own fsync (no group commit).
2. Ingest throughput with durable acks (a 202 means the batch is fsynced in the WAL). Bundles are sealed
   before anything is timed (`Sealer.seal`, ~4 KiB each: realistic summaries with varied routes, errors,
   fingerprints and releases, and an incompressible payload sized so the sealed bundle is ~4 KiB), packed
   with `encode_batch` and written to a file. The shippers run in a separate child process (this script
   re-invoked with `--shipper`, driven over stdin/stdout), one asyncio loop with N concurrent tasks, each
   with its own keep-alive HTTP/1.1 connection, POSTing its next batch as soon as the previous one is
   acknowledged (closed loop). The transport is a minimal HTTP/1.1 client on asyncio streams: httpx's
   AsyncClient cost ~0.8 ms of CPU per request here and its pool bookkeeping grew to most of a core at 64
   connections, which would take the second core from the server. Levels:
   - Saturation (capacity): 1 shipper with batches of 1 bundle, then 1, 8 and 64 shippers with batches of
     20, each POSTing back to back. These give the bundles/s the server sustains (the 5,000/s target), but
     their latency is not the server's: a closed loop holds shippers x batch bundles in flight, so its mean
     latency is in-flight ÷ bundles/s (Little's law), 8 x 20 under 25 ms would need 6,400 bundles/s and
     64 x 20 51,200/s on two cores. Their p99 is printed as information, not as a target.
   - Latency at the target rate (the p99 target): one open-loop level offers exactly 5,000 bundles/s
     (250 requests/s of 20, at most 64 in flight) and measures latency from each request's scheduled send
     time, so a stall counts against it (no coordinated omission). Then 1, 8 and 64 "SDK shippers" offer
     5,000 bundles/s together, each behaving as fluxrun's own shipper does (`HttpSink` in
     src/fluxrun/shipping/http.py, one per app process): bundles arrive at random (Poisson, 5,000/s ÷ N
     each), the first queued bundle waits up to 50 ms (its `linger`) for others, one request is in flight
     at a time, a request takes at most 100 bundles (`max_batch_bundles`), and its latency is send to 202.
     So 1 shipper sends ~100-bundle requests, 8 send ~33, 64 send ~5 (about 1,000 requests/s). This is the
     reading of "p99 ack with 1, 8 and 64 concurrent shippers" that a deployment sees: N app processes
     shipping 5,000 failures a second between them, rather than N clients that always have 20 more queued.
   Reported: bundles/s and requests/s over
   the measured window (after a warm-up), ack latency p50/p99, the server's CPU (all threads, /proc) and
   the shippers' CPU over the window, and the WAL backlog the aggregator still had to index at the end,
   with the time it took to drain (each level starts drained). Baselines from the same run: the raw fsync
   rate of section 1, and `GET /healthz` (no body, no fsync) from the same child with 8 connections.
3. Time from ack to query visibility: a single-bundle batch is POSTed; from its 202, `GET /v1/runs/{id}`
   is polled with an API key until it answers 200. Idle: one probe at a time, polled every 2 ms. Under
   load, while the child ingests batches of 20: (a) steady, an open loop at half the best rate of
   section 2 (at least the 5,000 bundles/s target), where the < 2 s target applies, and (b) saturated,
   8 closed-loop shippers; probes spread over the load, the oldest outstanding one polled every 10 ms
   (also after the load ended, until all are visible). Saturated is information, not a target: the edge
   then acks faster than the aggregator, sharing the two cores, can index, so the lag grows by the
   difference for as long as the overload lasts (bounded by the WAL backlog limit's 429s), whatever the
   design; its row says how fast that is.
4. Run-list query latency with 1,000,000 indexed executions (100,000 with --quick), on SQLite and on
   PostgreSQL (127.0.0.1:5432: a fresh database `fluxrun_bench_<hex>`, dropped at the end). Ingesting that
   many through HTTP would take too long, so the index is bulk-loaded: the server's own schema
   (`make_engine` + `migrate`), control-plane rows through `fluxrun_server.admin`, Issue rows, then the
   Execution rows, realistic: started_at over 30 days with a daily cycle, a slow growth and three incident
   spikes; 40 routes with Zipf-like traffic; 12 error types per-route, and 5xx answers without one;
   releases every two days with a canary share on the previous one; summaries shaped like the SDK's.
   The secondary indexes of `Execution` are dropped for the load and re-created from the model's own
   definitions afterwards (faster than maintaining them row by row; the same indexes in the end); so is the
   text index of migration 0002 (SQLite: its triggers are dropped and the FTS5 table rebuilt once;
   PostgreSQL: the pg_trgm GIN index is re-created from its own definition).
   SQLite: SQLAlchemy core `insert()` compiled for the dialect, executemany in batches of 50,000 on a
   connection of the server's engine (for the load only: synchronous=OFF, a 1 GB page cache, one WAL
   checkpoint at the end); no ANALYZE (the server never runs one). PostgreSQL: `COPY ... FROM STDIN` in text
   format (synchronous_commit off for that session), then ANALYZE (what autovacuum does soon after a load
   of that size). Then the real server is started on that
   database and `GET /v1/projects/{id}/runs` is timed from one keep-alive `httpx.Client`, one request at a
   time: first page, pages deep through next_cursor, filters by error type, route, release, issue, a time
   range, and text queries `q=`. p50/p95 per query; baseline: `GET /v1/projects` (HTTP + auth + a tiny
   query) in the same server.

A final table lists each target, the measured value and pass/fail.

Run (with the project installed: `pip install -e '.[test,bench]'`; PostgreSQL on 127.0.0.1:5432 with
trust auth for section 4's second half, which is skipped with a note if it is not reachable):

    python benchmarks/ingest.py                  # full run, about 3-4 minutes on 2 cores
    python benchmarks/ingest.py --quick          # smoke run, about 40 s, noisy numbers
    python benchmarks/ingest.py --json out.json  # also write the results as JSON
    python benchmarks/ingest.py --log nats       # the WAL beside NATS JetStream R3 (benchmarks/ingest_log.py)

Keys, bundles, batch files and every server data folder live in a temporary directory that is removed at
the end; the benchmark database is dropped. The servers listen on loopback only. The exit status is 0
even when a target is missed: this is a measurement, not a gate.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import contextlib
import gc
import hashlib
import itertools
import json
import math
import os
import platform
import random
import secrets
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import httpx
import orjson
import psycopg
from harness import free_port, percentile, targets_table, verdict
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import Engine, insert, text
from sqlmodel import Session

import fluxrun
from fluxrun.bundle import Sealer, generate_keys, load_capture_key, signing_public_key
from fluxrun_server import admin
from fluxrun_server.index.database import make_engine, migrate
from fluxrun_server.index.models import Execution, Issue
from fluxrun_server.ingest.batch import encode_batch

now_ns = time.perf_counter_ns
perf = time.perf_counter

# ------------------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    fsync_ops: int  # section 1: write + fsync loops
    warmup_s: float  # section 2: per level, before the measured window
    window_s: float  # section 2: measured window per level
    max_bundles_per_level: int  # cap on the bundles sealed for one closed-loop level
    visibility_idle: int  # section 3: samples while idle
    visibility_load: int  # section 3: probes per load (spread over visibility_load_s)
    visibility_load_s: float
    runlist_rows: int  # section 4: executions bulk-loaded per backend
    query_repeats: int  # section 4: timed requests per query (at most)
    query_budget_s: float  # section 4: stop repeating a query after this long (at least QUERY_MIN_REPEATS)


FULL = Settings(
    fsync_ops=1000,
    warmup_s=0.7,
    window_s=3.0,
    max_bundles_per_level=72_000,
    visibility_idle=50,
    visibility_load=30,
    visibility_load_s=5.0,
    runlist_rows=1_000_000,
    query_repeats=40,
    query_budget_s=2.5,
)
QUICK = Settings(
    fsync_ops=200,
    warmup_s=0.2,
    window_s=0.8,
    max_bundles_per_level=8_000,
    visibility_idle=10,
    visibility_load=6,
    visibility_load_s=1.2,
    runlist_rows=100_000,
    query_repeats=10,
    query_budget_s=0.5,
)

BUNDLE_TARGET_BYTES = 4096
BATCH = 20
QUERY_MIN_REPEATS = 3
QUERY_WARMUP = 2
POLL_INTERVAL_S = 0.002  # idle visibility probes
LOADED_POLL_INTERVAL_S = 0.01  # under load: the oldest outstanding probe is polled this often
STEADY_SHARE = 0.5  # the steady visibility load offers this share of the best measured ingest rate
OPEN_LOOP_BUNDLES_PER_S = 5000
LOAD_BATCH_ROWS = 50_000
PG_ADMIN = os.environ.get("FLUXRUN_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_HOST = "postgres@127.0.0.1:5432"

INGEST_TARGET_PER_S = 5000
ACK_P99_TARGET_MS = 25
VISIBILITY_TARGET_MS = 2000
RUNLIST_P95_TARGET_MS = 50


@dataclass(frozen=True)
class Level:
    name: str
    shippers: int
    batch: int  # bundles per request; for an SDK level, the most a request takes (the SDK's max_batch_bundles)
    rate: float = 0.0  # requests/s offered (open loop); 0 = closed loop
    sdk_rate: float = 0.0  # bundles/s arriving at the SDK-like shippers together (Poisson), 0 = not an SDK level

    @property
    def closed(self) -> bool:
        return not self.rate and not self.sdk_rate


# What fluxrun's HttpSink (src/fluxrun/shipping/http.py) does, per app process: one request in flight at a time,
# the first queued bundle waits up to `linger` for others, a request takes at most `max_batch_bundles`.
SDK_LINGER_S = 0.05
SDK_MAX_BATCH = 100

LEVELS = (
    Level("1 shipper, batch 1", 1, 1),
    Level("1 shipper, batch 20", 1, BATCH),
    Level("8 shippers, batch 20", 8, BATCH),
    Level("64 shippers, batch 20", 64, BATCH),
    Level(f"open loop {OPEN_LOOP_BUNDLES_PER_S:,}/s, batch 20", 64, BATCH, rate=OPEN_LOOP_BUNDLES_PER_S / BATCH),
    *(
        Level(
            f"{n} SDK shipper{'s' if n > 1 else ''}, {OPEN_LOOP_BUNDLES_PER_S:,}/s",
            n,
            SDK_MAX_BATCH,
            sdk_rate=OPEN_LOOP_BUNDLES_PER_S,
        )
        for n in (1, 8, 64)
    ),
)


# ------------------------------------------------------------------------------------------------------
# What the shop app's failures look like: routes, errors, releases (sections 2-4)
# ------------------------------------------------------------------------------------------------------

ROUTES: tuple[tuple[str, str], ...] = tuple(
    (f"/api/{version}/{path}", method)
    for version in ("v2", "v1")
    for path, method in (
        ("orders/{order_id}", "GET"),
        ("checkout", "POST"),
        ("cart/items", "POST"),
        ("search", "GET"),
        ("products/{sku}", "GET"),
        ("payments/{payment_id}/capture", "POST"),
        ("users/{user_id}", "GET"),
        ("cart", "GET"),
        ("shipping/quote", "POST"),
        ("inventory/{sku}", "GET"),
        ("orders", "GET"),
        ("users/{user_id}/addresses", "PUT"),
        ("coupons/{code}", "GET"),
        ("webhooks/stripe", "POST"),
        ("recommendations", "GET"),
        ("auth/refresh", "POST"),
        ("reports/daily", "GET"),
        ("admin/refunds/{refund_id}", "POST"),
        ("auth/login", "POST"),
        ("exports/{export_id}", "GET"),
    )
)
ROUTE_WEIGHTS = tuple(1 / (i + 1) ** 1.1 for i in range(len(ROUTES)))

ERRORS: tuple[tuple[str, str, float], ...] = (  # type, message, weight
    ("builtins:KeyError", "'price'", 9.0),
    ("builtins:TimeoutError", "timed out after 5.0 s calling pricing.internal", 7.0),
    ("shop.payments:Declined", "card declined", 6.0),
    ("sqlalchemy.exc:OperationalError", "could not serialize access due to concurrent update", 4.0),
    ("builtins:ValueError", "invalid literal for int() with base 10: 'abc'", 4.0),
    ("httpx:ConnectError", "[Errno 111] Connection refused", 3.0),
    ("builtins:AttributeError", "'NoneType' object has no attribute 'id'", 3.0),
    ("shop.inventory:OutOfStock", "sku out of stock", 2.0),
    ("pydantic_core:ValidationError", "1 validation error for Order", 2.0),
    ("redis.exceptions:ConnectionError", "Error 104 connecting to cache:6379. Connection reset by peer.", 1.5),
    ("builtins:ZeroDivisionError", "division by zero", 0.6),
    ("builtins:PermissionError", "[Errno 13] Permission denied: '/srv/exports/daily.csv'", 0.15),
)
HTTP_5XX_SHARE = 0.18  # answers with a 5xx status and no exception
RELEASE_EVERY_DAYS = 2
CANARY_SHARE = 0.1  # rows still on the previous release
DAYS = 30

EVENT_SHAPES: tuple[tuple[str, str, int | None], ...] = (  # kind, label, status
    ("env", "env SHOP_CURRENCY", None),
    ("time", "time.time", None),
    ("http", "GET https://pricing.internal/v1/price/{sku}", 200),
    ("http", "POST https://payments.example/v1/charges", 402),
    ("random", "uuid.uuid4", None),
    ("log", "log shop.orders INFO", None),
    ("http", "GET https://inventory.internal/stock/{sku}", 200),
    ("host", "boundary payments.charge", None),
)


@dataclass(frozen=True)
class Failure:
    """One issue: a route with an error type (or a 5xx status), its fingerprint and summary template."""

    route: str
    method: str
    error_type: str | None
    message: str | None
    status: int
    fingerprint: str  # as the aggregator groups it
    events: tuple[dict[str, Any], ...]


def failure_catalogue(rng: random.Random) -> tuple[list[Failure], list[list[tuple[int, float]]]]:
    """Every issue, and per route its issues as (index into the catalogue, cumulative weight)."""
    failures: list[Failure] = []
    per_route: list[list[tuple[int, float]]] = []
    for route, method in ROUTES:
        indices: list[int] = []
        weights: list[float] = []
        for pick in rng.sample(range(len(ERRORS)), rng.randint(3, 6)):
            error_type, message, weight = ERRORS[pick]
            fingerprint = hashlib.sha256(f"{error_type}|{route}|{message}".encode()).hexdigest()[:16]
            indices.append(len(failures))
            weights.append(weight)
            failures.append(Failure(route, method, error_type, message, 500, fingerprint, _events(rng)))
        share = sum(weights) * HTTP_5XX_SHARE / (1 - HTTP_5XX_SHARE) / 3  # three statuses, equal shares
        for status in (502, 503, 504):
            key = f"{method} {route} {status}"  # the aggregator's fingerprint for a 5xx without an exception
            fingerprint = "status-" + hashlib.sha256(key.encode()).hexdigest()[:16]
            indices.append(len(failures))
            weights.append(share)
            failures.append(Failure(route, method, None, None, status, fingerprint, _events(rng)))
        per_route.append(list(zip(indices, _cumulative(weights), strict=True)))
    return failures, per_route


def _events(rng: random.Random) -> tuple[dict[str, Any], ...]:
    events = []
    start = 0.0
    for seq, (kind, label, status) in enumerate(rng.sample(EVENT_SHAPES, rng.randint(2, 6))):
        duration = round(rng.uniform(1, 40), 3) if kind == "http" else 0.002
        event: dict[str, Any] = {
            "seq": seq,
            "kind": kind,
            "label": label,
            "task": "0",
            "start_ms": round(start, 3),
            "dur_ms": duration,
        }
        if status is not None:
            event["status"] = status
        events.append(event)
        start += duration + rng.uniform(0.05, 2)
    return tuple(events)


def release_name(index: int) -> str:
    return f"shop@3.{index}.0"


def pick_failure(rng: random.Random, per_route: list[list[tuple[int, float]]], route_index: int) -> int:
    choices = per_route[route_index]
    x = rng.random() * choices[-1][1]
    return choices[bisect.bisect_left([c[1] for c in choices], x)][0]


def summary_for(failure: Failure, bundle_id: str, started: str, release: str, rng: random.Random) -> dict[str, Any]:
    """A summary shaped like the SDK's `build_summary` output."""
    events = list(failure.events)
    counts = Counter(e["kind"] for e in events)
    return {
        "bundle_id": bundle_id,
        "execution": "asgi",
        "entry": "shop.app:app",
        "started_at": started,
        "duration_ms": round(rng.lognormvariate(3.5, 0.8), 3),
        "route": failure.route,
        "method": failure.method,
        "path": failure.route.replace("{", "").replace("}", ""),
        "status": failure.status,
        "outcome": "error" if failure.error_type else "http_5xx",
        "error": {"type": failure.error_type, "message": failure.message} if failure.error_type else None,
        "fingerprint": failure.fingerprint if failure.error_type else None,
        "request_id": bundle_id[:12],
        "trace_id": f"{rng.getrandbits(128):032x}" if rng.random() < 0.5 else None,
        "events": events,
        "counts": dict(counts),
        "sdk": {"name": "fluxrun.python", "version": fluxrun.__version__},
        "release": release,
        "environment": "production",
    }


# ------------------------------------------------------------------------------------------------------
# Bundles for sections 2 and 3
# ------------------------------------------------------------------------------------------------------


class BundleFactory:
    """Seals realistic ~4 KiB bundles: varied summaries, a payload padded with incompressible filler."""

    def __init__(self, sealer: Sealer, seed: int) -> None:
        self.sealer = sealer
        self.rng = random.Random(seed)
        self.failures, self.per_route = failure_catalogue(random.Random(seed + 1))
        self.route_cum = list(_cumulative(ROUTE_WEIGHTS))
        self.filler = 0
        self.filler = self._calibrate()

    def _calibrate(self) -> int:
        """Filler length that makes the average sealed bundle BUNDLE_TARGET_BYTES."""

        def mean_size(filler: int) -> float:
            self.filler = filler
            return statistics.mean(len(self.one()[1]) for _ in range(100))

        low, high = mean_size(0), mean_size(4000)
        per_char = (high - low) / 4000
        return max(0, round((BUNDLE_TARGET_BYTES - low) / per_char))

    def one(self) -> tuple[str, bytes]:
        rng = self.rng
        bundle_id = f"{rng.getrandbits(128):032x}"
        route_index = bisect.bisect_left(self.route_cum, rng.random() * self.route_cum[-1])
        failure = self.failures[pick_failure(rng, self.per_route, route_index)]
        started = datetime.now(UTC) - timedelta(milliseconds=rng.uniform(50, 2000))
        started_text = started.isoformat().replace("+00:00", "Z")
        summary = summary_for(failure, bundle_id, started_text, release_name(rng.choice((14, 14, 14, 13))), rng)
        payload = {
            "format": 1,
            "bundle_id": bundle_id,
            "execution": "asgi",
            "entry": "shop.app:app",
            "started_at": started_text,
            "request": {
                "method": failure.method,
                "path": summary["path"],
                "route": failure.route,
                "headers": [["content-type", "application/json"], ["user-agent", "shop-web/3.2"]],
            },
            "events": [{**e, "data": {"value": rng.getrandbits(64)}} for e in failure.events],
            "outcome": {"kind": summary["outcome"], "status": failure.status, "error": summary["error"]},
            "log_tail": base64.b64encode(rng.randbytes(self.filler * 3 // 4 + 1)).decode()[: self.filler],
        }
        return bundle_id, self.sealer.seal(summary=summary, payload=payload, bundle_id=bundle_id)

    def many(self, n: int) -> list[bytes]:
        return [self.one()[1] for _ in range(n)]


def _cumulative(weights: Iterable[float]) -> Iterator[float]:
    total = 0.0
    for weight in weights:
        total += weight
        yield total


def write_batches(path: Path, bundles: list[bytes], batch: int) -> int:
    """Pack `bundles` into request bodies of `batch` bundles, each body length-prefixed in `path`."""
    count = 0
    with path.open("wb") as out:
        for start in range(0, len(bundles), batch):
            body = encode_batch(bundles[start : start + batch])
            out.write(struct.pack(">I", len(body)) + body)
            count += 1
    return count


def read_batches(path: Path) -> list[bytes]:
    data = path.read_bytes()
    bodies, position = [], 0
    while position < len(data):
        (length,) = struct.unpack_from(">I", data, position)
        bodies.append(data[position + 4 : position + 4 + length])
        position += 4 + length
    return bodies


# ------------------------------------------------------------------------------------------------------
# The server as a subprocess, and its provisioning
# ------------------------------------------------------------------------------------------------------


@dataclass
class Credentials:
    project_id: int
    ingest_token: str
    api_key: str


def provision(url: str, capture_key: Path) -> Credentials:
    """Workspace `bench`, project `bench/shop` with the capture key registered, a token and an API key."""
    engine = make_engine(url)
    try:
        migrate(engine)
        with Session(engine) as session:
            admin.create_workspace(session, "bench")
            project = admin.create_project(session, "bench", "shop")
            key_id, public = signing_public_key(load_capture_key(capture_key))
            admin.register_key(session, "bench/shop", f"{key_id}:{public}")
            token = admin.issue_token(session, "bench/shop").secret
            api_key = admin.create_api_key(session, "bench", "bench-reader", "member").secret
            assert project.id is not None
            return Credentials(project.id, token, api_key)
    finally:
        engine.dispose()


class ServerProcess:
    """`python -m fluxrun.cli.app server` on 127.0.0.1, its output kept in a file for error reports."""

    def __init__(self, data_dir: Path, database_url: str | None = None) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "FLUXRUN_SERVER_DATA_DIR": str(data_dir),
            "FLUXRUN_SERVER_HOST": "127.0.0.1",
            "FLUXRUN_SERVER_PORT": str(self.port),
        }
        if database_url:
            self.env["FLUXRUN_SERVER_DATABASE_URL"] = database_url
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fluxrun.cli.app", "server"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start within 60 s:\n{self.output()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def health(self) -> dict[str, Any]:
        return httpx.get(self.url + "/healthz", timeout=10).json()  # type: ignore[no-any-return]

    def drain(self, timeout: float = 180.0) -> float:
        """Wait until the aggregator has indexed every acknowledged bundle; seconds waited (NaN on timeout)."""
        started = perf()
        while perf() - started < timeout:
            if self.health()["wal"]["backlog_records"] == 0:
                return perf() - started
            time.sleep(0.02)
        return math.nan


class DrainWatch:
    """Times the aggregator's catch-up in a thread (into `summary["drain_s"]`) while the next pool is sealed."""

    def __init__(self, server: ServerProcess, summary: dict[str, Any]) -> None:
        self.summary = summary
        self.thread = threading.Thread(target=lambda: summary.update(drain_s=server.drain()), daemon=True)
        self.thread.start()

    def finish(self) -> None:
        self.thread.join()


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, all its threads, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


# ------------------------------------------------------------------------------------------------------
# Section 1: raw fsync rate
# ------------------------------------------------------------------------------------------------------


def measure_fsync(directory: Path, ops: int) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "fsync-probe.bin"
    block = os.urandom(4096)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    samples = []
    try:
        for _ in range(min(20, ops)):  # warm-up: allocate, settle the journal
            os.write(fd, block)
            os.fsync(fd)
        started = now_ns()
        for _ in range(ops):
            t0 = now_ns()
            os.write(fd, block)
            os.fsync(fd)
            samples.append((now_ns() - t0) / 1000)
        total_s = (now_ns() - started) / 1e9
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    median_us = statistics.median(samples)
    return {
        "ops": ops,
        "median_us": median_us,
        "p99_us": percentile(samples, 99),
        "ops_per_s": 1e6 / median_us,
        "overall_ops_per_s": ops / total_s,
    }


# ------------------------------------------------------------------------------------------------------
# Section 2: the shipper child process
# ------------------------------------------------------------------------------------------------------


class HttpConnection:
    """A minimal HTTP/1.1 keep-alive connection on asyncio streams: the shippers' transport.

    httpx's AsyncClient costs about 1 ms of CPU per request here, and its pool's bookkeeping grows with the
    number of waiting requests (64 shippers took most of a core); on two cores that competes with the
    server. This costs a few µs. Every answer the server gives on these routes carries a Content-Length.
    """

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host = host
        self.port = port
        self.head = "".join(f"{k}: {v}\r\n" for k, v in {"host": f"{host}:{port}", **headers}.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.writelines(
            (f"{method} {path} HTTP/1.1\r\n{self.head}content-length: {len(body)}\r\n\r\n".encode(), body)
        )
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split()[1])
        length, close = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
            elif name == b"transfer-encoding":
                raise ConnectionError("a chunked answer was not expected")
        data = await self.reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
            self.writer = None


async def ship(command: dict[str, Any], url: str, server_pid: int) -> dict[str, Any]:
    """One level, driven from this (child) process; results for the measured window only."""
    bodies = read_batches(Path(command["batches"])) if command.get("batches") else []
    health = command["endpoint"] == "healthz"
    concurrency, rate = int(command["concurrency"]), float(command["rate"])
    host, port = url.removeprefix("http://").rsplit(":", 1)
    headers = {"authorization": f"Bearer {command['token']}", "content-type": "application/x-fluxrun-batch"}
    connections = [HttpConnection(host, int(port), headers) for _ in range(concurrency)]
    records: list[tuple[float, float, int, int]] = []  # (latency start, done, status, accepted)
    state: dict[str, Any] = {"next": 0, "exhausted_at": None}

    async def request(connection: HttpConnection, index: int) -> tuple[int, int]:
        if health:
            status, _ = await connection.request("GET", "/healthz")
            return status, 0
        status, data = await connection.request("POST", "/v1/executions", bodies[index])
        return status, len(orjson.loads(data)["accepted"]) if status == 202 else 0

    def take_index() -> int | None:
        if health:
            return 0
        index = int(state["next"])
        if index >= len(bodies):
            if state["exhausted_at"] is None:
                state["exhausted_at"] = perf()
            return None
        state["next"] = index + 1
        return index

    await asyncio.gather(*(c.request("GET", "/healthz") for c in connections))  # connect before the clock
    print("ready", flush=True)
    start = perf()
    measure_from = start + float(command["warmup"])
    end = measure_from + float(command["duration"])
    cpu0: tuple[float, tuple[float, float]] | None = None

    async def cpu_marker() -> None:
        nonlocal cpu0
        await asyncio.sleep(max(0.0, measure_from - perf()))
        cpu0 = (time.process_time(), cpu_seconds(server_pid))

    async def closed_loop(connection: HttpConnection) -> None:
        while perf() < end:
            index = take_index()
            if index is None:
                return
            sent = perf()
            status, accepted = await request(connection, index)
            records.append((sent, perf(), status, accepted))

    marker = asyncio.create_task(cpu_marker())
    sdk_rate = float(command.get("sdk_rate") or 0)
    batch_sizes: list[int] = []
    if sdk_rate > 0:
        # Each shipper is one app process's HttpSink: bundles arrive (Poisson, sdk_rate / shippers each), the
        # first queued one waits up to the linger for company, one request is in flight at a time, and a
        # request takes at most max_batch queued bundles. Latency is the request's: send to 202.
        linger, most = float(command["linger"]), int(command["max_batch"])
        rng = random.Random(20261128)

        def arrivals() -> list[float]:
            times, at = [], start
            while at < end:
                at += rng.expovariate(sdk_rate / concurrency)
                times.append(at)
            return times

        async def sdk_shipper(connection: HttpConnection, times: list[float]) -> None:
            i = 0
            while i < len(times):
                full_at = times[i + most - 1] if i + most <= len(times) else math.inf  # the request is full
                send_at = min(times[i] + linger, full_at)
                if send_at >= end:
                    return
                if send_at > perf():
                    await asyncio.sleep(send_at - perf())
                now, j = perf(), i
                while j < len(times) and j - i < most and times[j] <= now:
                    j += 1
                taken = []
                for _ in range(j - i):
                    index = take_index()
                    if index is None:
                        return
                    taken.append(bodies[index])  # single-bundle bodies: joined, they are one batch body
                sent = perf()
                status, data = await connection.request("POST", "/v1/executions", b"".join(taken))
                accepted = len(orjson.loads(data)["accepted"]) if status == 202 else 0
                records.append((sent, perf(), status, accepted))
                batch_sizes.append(len(taken))
                i = j

        await asyncio.gather(*(sdk_shipper(c, arrivals()) for c in connections))
    elif rate > 0:
        idle: asyncio.Queue[HttpConnection] = asyncio.Queue()
        for connection in connections:
            idle.put_nowait(connection)

        async def scheduled(index: int, at: float) -> None:
            connection = await idle.get()  # at most `concurrency` in flight; waiting counts as latency
            try:
                status, accepted = await request(connection, index)
            finally:
                idle.put_nowait(connection)
            records.append((at, perf(), status, accepted))

        tasks = []
        for i in itertools.count():
            at = start + i / rate
            if at >= end:
                break
            index = take_index()
            if index is None:
                break
            if at > perf():
                await asyncio.sleep(at - perf())
            tasks.append(asyncio.create_task(scheduled(index, at)))
        await asyncio.gather(*tasks)
    else:
        await asyncio.gather(*(closed_loop(c) for c in connections))
    await marker
    cpu1 = (time.process_time(), cpu_seconds(server_pid))
    elapsed = perf() - measure_from  # CPU is read up to the last answer, so it is divided by that span
    for connection in connections:
        await connection.close()
    window_end = min(end, state["exhausted_at"] or end)
    window = [r for r in records if measure_from <= r[1] <= window_end]
    assert cpu0 is not None
    return {
        "window_s": window_end - measure_from,
        "requests": len(window),
        "bundles": sum(r[3] for r in window),
        "statuses": dict(Counter(str(r[2]) for r in window)),
        "latencies_ms": [(r[1] - r[0]) * 1000 for r in window],
        "exhausted": state["exhausted_at"] is not None and state["exhausted_at"] < end,
        "shipper_cpu": (cpu1[0] - cpu0[0]) / elapsed,
        "server_cpu": (cpu1[1][0] + cpu1[1][1] - cpu0[1][0] - cpu0[1][1]) / elapsed,
        "server_sys_cpu": (cpu1[1][1] - cpu0[1][1]) / elapsed,
        "mean_batch": statistics.mean(batch_sizes) if batch_sizes else None,
    }


def shipper_main(args: argparse.Namespace) -> int:
    """The child: one JSON command per stdin line; answers "ready", then one JSON result line."""
    for line in sys.stdin:
        command = orjson.loads(line)
        if command.get("op") == "exit":
            break
        result = asyncio.run(ship(command, args.url, args.server_pid))
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
        sys.stdout.flush()
    return 0


class ShipperProcess:
    """The shipper child (this script with `--shipper`), kept for every level of one server."""

    def __init__(self, server: ServerProcess) -> None:
        self.token = ""
        self.stderr_path = server.data_dir.parent / "shipper.stderr"
        self._stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--shipper", "--url", server.url, "--server-pid", str(server.pid)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )

    def _readline(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            raise RuntimeError(f"the shipper exited: {self.stderr_path.read_text(errors='replace')[-3000:]}")
        return line

    def start(
        self,
        batches: Path | None,
        *,
        concurrency: int,
        warmup: float,
        duration: float,
        rate: float = 0.0,
        sdk_rate: float = 0.0,
        endpoint: str = "executions",
    ) -> None:
        """Send one level; returns once the child has loaded its batches and opened its connections."""
        command = {
            "batches": str(batches) if batches else None,
            "token": self.token,
            "concurrency": concurrency,
            "warmup": warmup,
            "duration": duration,
            "rate": rate,
            "sdk_rate": sdk_rate,
            "linger": SDK_LINGER_S,
            "max_batch": SDK_MAX_BATCH,
            "endpoint": endpoint,
        }
        assert self.proc.stdin is not None
        self.proc.stdin.write(orjson.dumps(command).decode() + "\n")
        self.proc.stdin.flush()
        line = self._readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the shipper did not start: {line}")

    def result(self) -> dict[str, Any]:
        return orjson.loads(self._readline())  # type: ignore[no-any-return]

    def run(self, batches: Path | None, **options: Any) -> dict[str, Any]:
        self.start(batches, **options)
        return self.result()

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write('{"op": "exit"}\n')
                self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


# ------------------------------------------------------------------------------------------------------
# Section 2: levels
# ------------------------------------------------------------------------------------------------------


def summarise_shipping(result: dict[str, Any]) -> dict[str, Any]:
    seconds = max(result["window_s"], 1e-9)
    latencies = result["latencies_ms"]
    return {
        "requests_per_s": result["requests"] / seconds,
        "bundles_per_s": result["bundles"] / seconds,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": max(latencies) if latencies else math.nan,
        "requests": result["requests"],
        "bundles": result["bundles"],
        "statuses": result["statuses"],
        "window_s": result["window_s"],
        "exhausted": result["exhausted"],
        "server_cpu": result["server_cpu"],
        "server_sys_cpu": result["server_sys_cpu"],
        "shipper_cpu": result["shipper_cpu"],
        "mean_batch": result.get("mean_batch"),
    }


def measure_ingest(
    settings: Settings,
    server: ServerProcess,
    shipper: ShipperProcess,
    factory: BundleFactory,
    workdir: Path,
    console: Console,
) -> dict[str, Any]:
    results: dict[str, Any] = {"levels": {}}
    span = settings.warmup_s + settings.window_s

    console.print("  baseline: GET /healthz, 8 connections ...")
    health = shipper.run(None, concurrency=8, warmup=settings.warmup_s, duration=settings.window_s, endpoint="healthz")
    results["healthz"] = summarise_shipping(health)

    estimate = 12000.0  # bundles/s, to size the first batch-20 pool; later levels use the best measurement
    seal_seconds = 0.0
    sealed = 0
    watch: DrainWatch | None = None
    for level in LEVELS:
        if level.sdk_rate:
            count = int(level.sdk_rate * span * 1.1) + SDK_MAX_BATCH  # Poisson arrivals: a margin over the mean
        elif level.rate:
            count = int(level.rate * level.batch * span) + level.batch * 4
        elif level.batch == 1:
            count = int(2500 * span)
        else:
            count = min(int(estimate * 1.6 * span), settings.max_bundles_per_level)
        count -= count % level.batch
        started = perf()
        bundles = factory.many(count)  # while the aggregator indexes the previous level's backlog
        seal_seconds += perf() - started
        sealed += count
        path = workdir / f"level-{level.shippers}x{level.batch}-{int(level.rate)}-{int(level.sdk_rate)}.batches"
        write_batches(path, bundles, 1 if level.sdk_rate else level.batch)  # SDK shippers join single bodies
        del bundles
        if watch is not None:
            watch.finish()
        server.drain()
        console.print(f"  {level.name}: {count:,} bundles sealed ...")
        raw = shipper.run(
            path,
            concurrency=level.shippers,
            warmup=settings.warmup_s,
            duration=settings.window_s,
            rate=level.rate,
            sdk_rate=level.sdk_rate,
        )
        path.unlink(missing_ok=True)
        summary = summarise_shipping(raw)
        summary["backlog_at_end"] = server.health()["wal"]["backlog_records"]
        summary["pool"] = count
        results["levels"][level.name] = summary
        watch = DrainWatch(server, summary)
        if level.batch > 1 and level.closed:
            estimate = max(estimate, summary["bundles_per_s"])
    if watch is not None:
        watch.finish()
    results["sealed"] = sealed
    results["seal_s"] = seal_seconds
    return results


# ------------------------------------------------------------------------------------------------------
# Section 3: ack to visibility
# ------------------------------------------------------------------------------------------------------


def probe_visibility(
    server: ServerProcess,
    creds: Credentials,
    probes: list[tuple[str, bytes]],
    *,
    spacing_s: float,
    poll_s: float,
    stop_at: float | None = None,
) -> list[float]:
    """ms from a single-bundle batch's 202 to the first 200 of GET /v1/runs/{id}, per probe.

    spacing_s 0: one probe at a time (the next is posted 20 ms after the previous one became visible).
    Otherwise one probe every spacing_s until stop_at, each polled every poll_s until it is visible; only the
    oldest outstanding probe is polled until it shows up (the aggregator indexes the WAL in order, so a later
    one cannot be visible first), which keeps the polling from loading a busy server.
    """
    samples: list[float] = []
    outstanding: dict[str, float] = {}
    pending = iter(probes)
    next_post = perf()
    posted_all = False
    ingest_headers = {"authorization": f"Bearer {creds.ingest_token}"}
    with httpx.Client(base_url=server.url, timeout=60, headers={"authorization": f"Bearer {creds.api_key}"}) as client:
        while True:
            now = perf()
            stopped = posted_all or (stop_at is not None and now >= stop_at)
            if not stopped and now >= next_post and (spacing_s > 0 or not outstanding):
                probe = next(pending, None)
                if probe is None:
                    posted_all = stopped = True
                else:
                    bundle_id, raw = probe
                    response = client.post("/v1/executions", content=encode_batch([raw]), headers=ingest_headers)
                    if response.status_code != 202 or response.json()["accepted"] != [bundle_id]:
                        raise RuntimeError(f"probe not accepted: {response.status_code} {response.text[:200]}")
                    outstanding[bundle_id] = perf()
                    next_post = now + spacing_s
            if stopped and not outstanding:
                return samples
            for bundle_id, acked in list(outstanding.items()):  # oldest first: the WAL is indexed in order
                status = client.get(f"/v1/runs/{bundle_id}").status_code
                if status == 200 or perf() - acked > 120:
                    samples.append((perf() - acked) * 1000 if status == 200 else math.inf)
                    del outstanding[bundle_id]
                    if spacing_s == 0:
                        next_post = perf() + 0.02
                elif status == 404:
                    break  # a later probe is not indexed before this one
                else:
                    raise RuntimeError(f"GET /v1/runs answered {status}")
            time.sleep(poll_s)


def visibility_stats(samples: list[float]) -> dict[str, Any]:
    return {
        "samples": len(samples),
        "p50_ms": percentile(samples, 50),
        "p99_ms": percentile(samples, 99),
        "max_ms": max(samples) if samples else math.nan,
    }


def measure_visibility(
    settings: Settings,
    server: ServerProcess,
    shipper: ShipperProcess,
    creds: Credentials,
    factory: BundleFactory,
    workdir: Path,
    console: Console,
    best_per_s: float,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    server.drain()
    console.print("  idle ...")
    probes = [factory.one() for _ in range(settings.visibility_idle)]  # sealed before timing
    results["idle"] = visibility_stats(probe_visibility(server, creds, probes, spacing_s=0, poll_s=POLL_INTERVAL_S))

    seconds = settings.visibility_load_s
    steady_rate = round(max(best_per_s * STEADY_SHARE, INGEST_TARGET_PER_S) / BATCH)  # requests/s
    loads = (
        (
            "steady",
            f"steady: open loop at {STEADY_SHARE:.0%} of the best ingest rate, ≥ {INGEST_TARGET_PER_S:,}/s",
            64,
            steady_rate,
        ),
        ("saturated", "saturated: 8 shippers, closed loop", 8, 0),
    )
    for key, label, concurrency, rate in loads:
        count = int((rate * BATCH if rate else best_per_s * 1.6) * (seconds + 0.3)) + BATCH
        count -= count % BATCH
        path = workdir / f"visibility-{key}.batches"
        write_batches(path, factory.many(count), BATCH)
        probes = [factory.one() for _ in range(settings.visibility_load)]
        server.drain()
        console.print(f"  under load, {label} ({count:,} bundles sealed) ...")
        shipper.start(path, concurrency=concurrency, warmup=0.3, duration=seconds, rate=rate)
        started = perf()
        time.sleep(0.3)
        samples = probe_visibility(
            server,
            creds,
            probes,
            spacing_s=(seconds - 0.2) / settings.visibility_load,
            poll_s=LOADED_POLL_INTERVAL_S,
            stop_at=started + seconds,
        )
        load = summarise_shipping(shipper.result())
        path.unlink(missing_ok=True)
        results[key] = {**visibility_stats(samples), "label": label, "load_bundles_per_s": load["bundles_per_s"]}
        results[key]["drain_s"] = server.drain()
    return results


# ------------------------------------------------------------------------------------------------------
# Section 4: bulk-loaded index and run-list queries
# ------------------------------------------------------------------------------------------------------

COLUMNS = [c.name for c in Execution.__table__.columns]  # type: ignore[attr-defined]


@dataclass
class IndexData:
    """The generated Execution rows (tuples in COLUMNS order; times as 'YYYY-MM-DD HH:MM:SS.ffffff' UTC),
    the Issue rows, and the facts the queries are chosen from."""

    rows: list[tuple[Any, ...]]
    issues: list[dict[str, Any]]
    failures: list[Failure]
    base: datetime
    error_counts: Counter[str]
    route_counts: Counter[str]
    release_counts: Counter[str]
    issue_counts: Counter[int]
    started: list[str]  # ascending
    generate_s: float = 0.0
    summary_bytes: float = 0.0


def generate_index(n: int, project_id: int, seed: int = 20251009) -> IndexData:
    gc.disable()  # a million new tuples would otherwise trigger full collections over the growing list
    try:
        return _generate_index(n, project_id, seed)
    finally:
        gc.enable()


def _generate_index(n: int, project_id: int, seed: int) -> IndexData:
    rng = random.Random(seed)
    started_clock = perf()
    failures, per_route = failure_catalogue(random.Random(seed + 1))
    now = datetime.now(UTC).replace(tzinfo=None, second=0, microsecond=0)
    base = now - timedelta(days=DAYS)
    hours = DAYS * 24
    incidents = set(rng.sample(range(hours), 3))
    weights = [
        (1 + 0.65 * math.sin(2 * math.pi * ((h % 24) - 9) / 24))
        * (1 + 0.015 * (h // 24))
        * (8 if h in incidents else 1)
        for h in range(hours)
    ]
    hour_of = rng.choices(range(hours), weights=weights, k=n)
    offsets = sorted(h * 3_600_000_000 + rng.randrange(3_600_000_000) for h in hour_of)
    del hour_of
    route_of = rng.choices(range(len(ROUTES)), weights=ROUTE_WEIGHTS, k=n)
    route_cums = [[c[1] for c in choices] for choices in per_route]

    # one summary template per issue: orjson text with %-placeholders for the per-row fields
    templates = []
    for failure in failures:
        shape = summary_for(failure, "@B", "@S", "@R", random.Random(0))
        shape.update(duration_ms="@D", trace_id="@T", request_id="@Q")
        body = orjson.dumps(shape).decode().replace("%", "%%")
        for marker, slot in (
            ('"@B"', '"%s"'),
            ('"@S"', '"%s"'),
            ('"@R"', '"%s"'),
            ('"@D"', "%s"),
            ('"@T"', "%s"),
            ('"@Q"', '"%s"'),
        ):
            body = body.replace(marker, slot)
        templates.append(body)

    rows: list[tuple[Any, ...]] = []
    segment, segment_offset, segment_rows = 0, 44, 0
    segment_key = ""
    summary_bytes = 0
    getrandbits, uniform, rand = rng.getrandbits, rng.uniform, rng.random
    for i in range(n):
        offset = offsets[i]
        started_dt = base + timedelta(microseconds=offset)
        started = started_dt.isoformat(" ", "microseconds")
        received = (started_dt + timedelta(milliseconds=uniform(150, 4000))).isoformat(" ", "microseconds")
        route_index = route_of[i]
        cums = route_cums[route_index]
        choice = per_route[route_index][bisect.bisect_left(cums, rand() * cums[-1])][0]
        failure = failures[choice]
        day = offset // 86_400_000_000
        release_index = day // RELEASE_EVERY_DAYS
        if release_index and rand() < CANARY_SHARE:
            release_index -= 1
        release = release_name(release_index)
        bundle_id = f"{getrandbits(128):032x}"
        duration = round(uniform(3, 900), 3)
        trace = f'"{getrandbits(128):032x}"' if rand() < 0.5 else "null"
        summary = templates[choice] % (
            bundle_id,
            started.replace(" ", "T") + "Z",
            duration,
            bundle_id[:12],
            trace,
            release,
        )
        summary_bytes += len(summary)
        if segment_rows == 0:
            segment += 1
            segment_offset = 44 + 2200 * 80
            segment_key = f"segments/{started_dt:%Y/%m/%d}/{offset // 1000:013d}-{getrandbits(64):016x}.seg"
        length = 4096 + int(uniform(-300, 300))
        issue_id = choice + 1  # issues are inserted first, in catalogue order, into an empty table
        rows.append(
            (
                bundle_id,
                project_id,
                issue_id,
                received,
                started,
                failure.route,
                failure.method,
                failure.status,
                "error" if failure.error_type else "http_5xx",
                failure.error_type,
                failure.message,
                failure.fingerprint,
                duration,
                release,
                "production",
                bundle_id[:12],
                None if trace == "null" else trace[1:-1],
                "sig_benchkey0001",
                len(failure.events),
                summary,
                segment_key,
                segment_offset,
                length,
                f"{getrandbits(256):064x}",
            )
        )
        segment_offset += length
        segment_rows = (segment_rows + 1) % 2000
    issue_of = [row[2] for row in rows]
    started_texts = [row[4] for row in rows]
    issue_counts = Counter(issue_of)
    issue_last = dict(zip(issue_of, started_texts, strict=True))  # rows are in time order: the last one wins
    issue_first = dict(zip(reversed(issue_of), reversed(started_texts), strict=True))
    error_counts = Counter(row[9] or "" for row in rows)
    route_counts = Counter(row[5] for row in rows)
    release_counts = Counter(row[13] for row in rows)
    issues = []
    for index, failure in enumerate(failures):
        issue_id = index + 1
        if issue_id not in issue_counts:
            first = last = base.isoformat(" ", "microseconds")
        else:
            first, last = issue_first[issue_id], issue_last[issue_id]
        issues.append(
            {
                "project_id": project_id,
                "fingerprint": failure.fingerprint,
                "error_type": failure.error_type or f"HTTP {failure.status}",
                "message": failure.message,
                "route": failure.route,
                "count": issue_counts[issue_id],
                "first_seen": datetime.fromisoformat(first).replace(tzinfo=UTC),
                "last_seen": datetime.fromisoformat(last).replace(tzinfo=UTC),
                "status": "open",
            }
        )
    data = IndexData(
        rows,
        issues,
        failures,
        base.replace(tzinfo=UTC),
        error_counts,
        route_counts,
        release_counts,
        issue_counts,
        started_texts,
    )
    data.generate_s = perf() - started_clock
    data.summary_bytes = summary_bytes / max(n, 1)
    return data


def insert_issues(engine: Engine, data: IndexData) -> None:
    with engine.begin() as connection:
        connection.execute(insert(Issue), data.issues)
        ids: dict[str, int] = {row[0]: row[1] for row in connection.execute(text("SELECT fingerprint, id FROM issue"))}
    expected = {issue["fingerprint"]: i + 1 for i, issue in enumerate(data.issues)}
    if ids != expected:
        raise RuntimeError("issue ids are not 1..N in catalogue order; the generated rows would point elsewhere")


def secondary_indexes() -> list[Any]:
    return sorted(Execution.__table__.indexes, key=lambda index: index.name)  # type: ignore[attr-defined]


def load_sqlite(engine: Engine, data: IndexData) -> dict[str, float]:
    """executemany of the dialect's compiled `insert(Execution)`, secondary indexes rebuilt afterwards."""
    statement = str(insert(Execution).compile(dialect=engine.dialect))
    processor = Execution.__table__.c.started_at.type._cached_bind_processor(engine.dialect)  # type: ignore[attr-defined]
    sample = datetime.fromisoformat(data.rows[0][4]).replace(tzinfo=UTC)
    if processor(sample) != data.rows[0][4]:  # the strings must be exactly what SQLAlchemy would store
        raise RuntimeError(f"SQLite datetime format mismatch: {processor(sample)!r} != {data.rows[0][4]!r}")
    timings = {}
    with engine.begin() as connection:
        for index in secondary_indexes():
            index.drop(connection)
        # the text index of migration 0002 (an FTS5 table fed by triggers): off for the load, rebuilt after it
        triggers = [
            (name, sql)
            for name, sql in connection.execute(
                text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'execution'")
            )
        ]
        for name, _sql in triggers:
            connection.execute(text(f'DROP TRIGGER "{name}"'))
        fts = connection.execute(text("SELECT count(*) FROM sqlite_master WHERE name = 'execution_text'")).scalar()
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        # this connection only, for the load: 1 GB of page cache, no fsync per commit, one checkpoint at the end
        cursor.execute("PRAGMA cache_size=-1000000")
        cursor.execute("PRAGMA synchronous=OFF")
        cursor.execute("PRAGMA wal_autocheckpoint=0")
        started = perf()
        for start in range(0, len(data.rows), LOAD_BATCH_ROWS):
            cursor.executemany(statement, data.rows[start : start + LOAD_BATCH_ROWS])
            raw.commit()
        timings["rows_s"] = perf() - started
        started = perf()
        for index in secondary_indexes():
            cursor.execute(str(_create_index_sql(index, engine)))
        if fts:
            cursor.execute("INSERT INTO execution_text(execution_text) VALUES ('rebuild')")
        for _name, sql in triggers:
            cursor.execute(sql)
        raw.commit()
        timings["indexes_s"] = perf() - started
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        cursor.close()
    finally:
        raw.close()
    return timings


def _create_index_sql(index: Any, engine: Engine) -> str:
    from sqlalchemy.schema import CreateIndex

    return str(CreateIndex(index).compile(dialect=engine.dialect))


def load_postgres(engine: Engine, url: str, data: IndexData) -> dict[str, float]:
    """COPY in text format, secondary indexes rebuilt afterwards, then ANALYZE."""
    timings = {}
    with engine.begin() as connection:
        for index in secondary_indexes():
            index.drop(connection)
        # indexes made by migrations outside the model (the pg_trgm text index of 0002): rebuilt after the load too
        extra = [
            (name, definition)
            for name, definition in connection.execute(
                text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'execution'")
            )
            if name != "execution_pkey"
        ]
        for name, _definition in extra:
            connection.execute(text(f'DROP INDEX "{name}"'))
    columns = ", ".join(f'"{c}"' for c in COLUMNS)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")  # the generated times are UTC without an offset
        conn.execute("SET synchronous_commit = off")
        started = perf()
        with conn.cursor() as cursor, cursor.copy(f"COPY execution ({columns}) FROM STDIN") as copy:
            chunk: list[str] = []
            for row in data.rows:
                chunk.append("\t".join("\\N" if v is None else _copy_text(v) for v in row))
                if len(chunk) >= 10_000:
                    copy.write("\n".join(chunk) + "\n")
                    chunk = []
            if chunk:
                copy.write("\n".join(chunk) + "\n")
        timings["rows_s"] = perf() - started
        started = perf()
        conn.execute("SET maintenance_work_mem = '256MB'")
        for index in secondary_indexes():
            conn.execute(_create_index_sql(index, engine))
        for _name, definition in extra:
            conn.execute(definition)
        timings["indexes_s"] = perf() - started
        started = perf()
        conn.execute("ANALYZE execution")
        conn.execute("ANALYZE issue")
        timings["analyze_s"] = perf() - started
    return timings


def _copy_text(value: Any) -> str:
    if isinstance(value, str):
        if "\\" in value or "\t" in value or "\n" in value:
            return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
        return value
    return str(value)


def make_cursor(started: str, bundle_id: str) -> str:
    """A next_cursor as the server writes it (query.py `_cursor`): started_at ISO with offset, bundle id."""
    moment = datetime.fromisoformat(started).replace(tzinfo=UTC)
    return base64.urlsafe_b64encode(json.dumps([moment.isoformat(), bundle_id]).encode()).decode()


@dataclass(frozen=True)
class Query:
    label: str
    params: dict[str, Any]
    matching: int  # rows of the project the filter matches (from the generated data)
    text: bool = False
    path: str = ""  # default: the project's run list


def plan_queries(data: IndexData, client: httpx.Client, project_id: int) -> list[Query]:
    n = len(data.rows)
    runs = f"/v1/projects/{project_id}/runs"
    queries = [Query("baseline: GET /v1/projects", {}, 0, path="/v1/projects")]
    queries.append(Query("first page, no filter (limit 50)", {"limit": 50}, n))
    cursor = None
    for _ in range(10):
        params = {"limit": 50, **({"cursor": cursor} if cursor else {})}
        cursor = client.get(runs, params=params).json()["next_cursor"]
    queries.append(Query("page 11 via next_cursor (10 pages followed)", {"limit": 50, "cursor": cursor}, n - 500))
    middle = n // 2
    row = data.rows[middle]
    queries.append(
        Query("cursor mid-list (15 days back)", {"limit": 50, "cursor": make_cursor(row[4], row[0])}, middle)
    )
    common_error, common_count = data.error_counts.most_common(1)[0]
    rare_error, rare_count = min(((e, c) for e, c in data.error_counts.items() if e), key=lambda ec: ec[1])
    queries.append(Query(f"error_type={common_error} (most common)", {"error_type": common_error}, common_count))
    queries.append(Query(f"error_type={rare_error} (rarest)", {"error_type": rare_error}, rare_count))
    routes = data.route_counts.most_common()
    route, route_count = routes[len(routes) // 4]
    queries.append(Query(f"route={route}", {"route": route}, route_count))
    latest = max(data.release_counts, key=lambda r: int(r.split(".")[1]))
    queries.append(Query(f"release={latest} (latest)", {"release": latest}, data.release_counts[latest]))
    old = release_name(DAYS // RELEASE_EVERY_DAYS // 3)
    queries.append(Query(f"release={old} (three weeks old)", {"release": old}, data.release_counts[old]))
    issue_id, issue_count = data.issue_counts.most_common(3)[2]
    queries.append(Query(f"issue_id={issue_id} (3rd largest issue)", {"issue_id": issue_id}, issue_count))
    since = data.base + timedelta(days=10, hours=14)
    until = since + timedelta(hours=6)
    lo = bisect.bisect_left(data.started, since.replace(tzinfo=None).isoformat(" ", "microseconds"))
    hi = bisect.bisect_left(data.started, until.replace(tzinfo=None).isoformat(" ", "microseconds"))
    queries.append(
        Query(
            "since/until: a 6 h window 20 days back", {"since": since.isoformat(), "until": until.isoformat()}, hi - lo
        )
    )
    for term, label in (
        ("declined", "q=declined (common)"),
        ("Permission", "q=Permission (rare)"),
        ("nosuchterm", "q=nosuchterm (no match: every row is read)"),
    ):
        matching = sum(
            data.issue_counts[i + 1]
            for i, f in enumerate(data.failures)
            if any(term.lower() in (s or "").lower() for s in (f.route, f.error_type, f.message))
        )
        queries.append(Query(label, {"q": term}, matching, text=True))
    return [Query(q.label, q.params, q.matching, q.text, q.path or runs) for q in queries]


def time_queries(
    settings: Settings, server: ServerProcess, creds: Credentials, data: IndexData
) -> list[dict[str, Any]]:
    rows = []
    headers = {"authorization": f"Bearer {creds.api_key}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=120) as client:
        for query in plan_queries(data, client, creds.project_id):
            returned = 0
            for _ in range(QUERY_WARMUP):
                response = client.get(query.path, params=query.params)
                if response.status_code != 200:
                    raise RuntimeError(f"{query.label}: {response.status_code} {response.text[:300]}")
                returned = len(response.json().get("runs", response.json().get("projects", [])))
            samples: list[float] = []
            budget_end = perf() + settings.query_budget_s
            while len(samples) < settings.query_repeats and (len(samples) < QUERY_MIN_REPEATS or perf() < budget_end):
                started = perf()
                response = client.get(query.path, params=query.params)
                samples.append((perf() - started) * 1000)
                if response.status_code != 200:
                    raise RuntimeError(f"{query.label}: {response.status_code}")
            rows.append(
                {
                    "label": query.label,
                    "params": query.params,
                    "matching": query.matching,
                    "returned": returned,
                    "text": query.text,
                    "baseline": query.path == "/v1/projects",
                    "p50_ms": percentile(samples, 50),
                    "p95_ms": percentile(samples, 95),
                    "repeats": len(samples),
                }
            )
    return rows


def measure_runlist_sqlite(
    settings: Settings, data: IndexData, capture_key: Path, workdir: Path, console: Console
) -> dict[str, Any]:
    data_dir = workdir / "runlist-sqlite"
    url = f"sqlite:///{(data_dir / 'index.db').resolve()}"
    creds = provision(url, capture_key)
    engine = make_engine(url)
    try:
        insert_issues(engine, data)
        console.print(f"  SQLite: loading {len(data.rows):,} executions ...")
        timings = load_sqlite(engine, data)
    finally:
        engine.dispose()
    size = sum(p.stat().st_size for p in data_dir.glob("index.db*"))
    server = ServerProcess(data_dir)
    server.start()
    try:
        console.print("  SQLite: queries ...")
        queries = time_queries(settings, server, creds, data)
    finally:
        server.stop()
    return {"backend": "SQLite", "load": timings, "db_bytes": size, "queries": queries}


def measure_runlist_postgres(
    settings: Settings, data: IndexData, capture_key: Path, workdir: Path, console: Console
) -> dict[str, Any]:
    name = f"fluxrun_bench_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        console.print(f"[yellow]PostgreSQL at {PG_ADMIN} is not reachable; skipping it: {exc}[/yellow]")
        return {"backend": "PostgreSQL", "skipped": str(exc)}
    url = f"postgresql+psycopg://{PG_HOST}/{name}"
    server = ServerProcess(workdir / "runlist-postgres", url)
    try:
        creds = provision(url, capture_key)
        engine = make_engine(url)
        try:
            insert_issues(engine, data)
            console.print(f"  PostgreSQL: loading {len(data.rows):,} executions ...")
            timings = load_postgres(engine, f"postgresql://{PG_HOST}/{name}", data)
            with engine.connect() as connection:
                size = connection.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
        finally:
            engine.dispose()
        server.start()
        console.print("  PostgreSQL: queries ...")
        queries = time_queries(settings, server, creds, data)
    finally:
        server.stop()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return {"backend": "PostgreSQL", "database": name, "load": timings, "db_bytes": size, "queries": queries}


# ------------------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------------------


def fsync_table(result: dict[str, Any]) -> Table:
    table = Table(
        title="1. Raw fsync rate of the server's data disk (the ceiling for durable acks without group commit)",
        title_justify="left",
        caption="4 KiB os.write (O_APPEND) + os.fsync in a loop, on a file in the server's data folder, before "
        "the server starts; ops/s = 1 / median",
        caption_justify="left",
    )
    for column in ("operation", "ops", "median µs", "p99 µs", "ops/s", "overall ops/s"):
        table.add_column(column, justify="left" if column == "operation" else "right")
    table.add_row(
        "4 KiB append + fsync",
        f"{result['ops']:,}",
        f"{result['median_us']:.0f}",
        f"{result['p99_us']:.0f}",
        f"{result['ops_per_s']:,.0f}",
        f"{result['overall_ops_per_s']:,.0f}",
    )
    return table


def ingest_table(results: dict[str, Any], fsync: dict[str, Any], settings: Settings, bundle_bytes: float) -> Table:
    table = Table(
        title="2. Ingest with durable acks (202 = fsynced in the WAL)",
        title_justify="left",
        caption=f"{results['sealed']:,} bundles of ~{bundle_bytes:,.0f} bytes sealed before timing "
        f"({results['seal_s']:.1f} s). Shippers: a child process, one asyncio loop, one keep-alive HTTP/1.1 "
        "connection per shipper (a minimal client on asyncio streams), closed loop unless open loop; "
        f"{settings.warmup_s:g} s warm-up, then a {settings.window_s:g} s window (shorter if the sealed pool ran "
        "out: *). vs fsync = bundles/s ÷ the raw fsync ops/s of table 1 (> 1 only through batching and group "
        "commit); vs healthz = requests/s ÷ the /healthz requests/s. The open loop offers "
        f"{OPEN_LOOP_BUNDLES_PER_S:,} bundles/s as {OPEN_LOOP_BUNDLES_PER_S // BATCH} requests/s of {BATCH} on at "
        "most 64 connections; its latency counts from each request's scheduled send time. SDK shippers behave "
        f"like fluxrun's HttpSink: bundles arrive (Poisson, {OPEN_LOOP_BUNDLES_PER_S:,}/s in all), the first queued "
        f"one waits up to {SDK_LINGER_S * 1000:g} ms for others, one request in flight per shipper, at most "
        f"{SDK_MAX_BATCH} bundles a request; latency is send to 202. Closed loops hold "
        "shippers x batch bundles in flight, so p50 ≥ in-flight ÷ bundles/s (Little's law). CPU is the share "
        "of one core over the window (server: all threads from /proc, kernel time in brackets). backlog: "
        "bundles acked but not yet indexed at the end, the time the aggregator then needed to index them with "
        "no ingest running (while the benchmark process sealed the next level's bundles on the other core), "
        "and that rate (for backlogs ≥ 1,000).",
        caption_justify="left",
    )
    for column in (
        "load",
        "req/s",
        "bundles/s",
        "vs fsync",
        "vs healthz",
        "p50 ms",
        "p99 ms",
        "server CPU (sys)",
        "shipper CPU",
        "non-202",
        "backlog / drain (rate)",
        "target",
    ):
        table.add_column(column, justify="left" if column in ("load", "target") else "right")
    health = results["healthz"]
    table.add_row(
        "baseline: GET /healthz, 8 connections",
        f"{health['requests_per_s']:,.0f}",
        "",
        "",
        "1.00",
        f"{health['p50_ms']:.2f}",
        f"{health['p99_ms']:.2f}",
        f"{health['server_cpu']:.0%} ({health['server_sys_cpu']:.0%})",
        f"{health['shipper_cpu']:.0%}",
        str(sum(v for k, v in health["statuses"].items() if k != "200")),
        "",
        "",
    )
    for level in LEVELS:
        r = results["levels"][level.name]
        non_202 = sum(v for k, v in r["statuses"].items() if k != "202")
        target = ""
        if level.batch > 1 and level.closed:
            target = (
                f"≥ {INGEST_TARGET_PER_S:,}/s {verdict(r['bundles_per_s'] >= INGEST_TARGET_PER_S * 0.98)} "
                "(saturation: p99 is in flight ÷ rate)"
            )
        elif not level.closed:
            target = f"p99 < {ACK_P99_TARGET_MS} ms {verdict(r['p99_ms'] < ACK_P99_TARGET_MS)}"
        name = escape(level.name) + (" *" if r["exhausted"] else "")
        if level.sdk_rate and r.get("mean_batch"):
            name += f" (mean batch {r['mean_batch']:.1f})"
        table.add_row(
            name,
            f"{r['requests_per_s']:,.0f}",
            f"{r['bundles_per_s']:,.0f}",
            f"{r['bundles_per_s'] / fsync['ops_per_s']:.2f}",
            f"{r['requests_per_s'] / health['requests_per_s']:.2f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{r['server_cpu']:.0%} ({r['server_sys_cpu']:.0%})",
            f"{r['shipper_cpu']:.0%}",
            str(non_202),
            f"{r['backlog_at_end']:,} / {r['drain_s']:.1f} s"
            + (f" ({r['backlog_at_end'] / r['drain_s']:,.0f}/s)" if r["backlog_at_end"] >= 1000 else ""),
            target,
        )
    return table


def visibility_table(results: dict[str, Any]) -> Table:
    table = Table(
        title="3. Time from ack (202) to query visibility (GET /v1/runs/{id} answers 200)",
        title_justify="left",
        caption=f"single-bundle batches POSTed from the benchmark process. Idle: one probe at a time, polled every "
        f"{POLL_INTERVAL_S * 1000:g} ms. Under load (the child process ingesting batches of 20 meanwhile): probes "
        f"spread over the load, the oldest outstanding one polled every {LOADED_POLL_INTERVAL_S * 1000:g} ms until "
        "visible, also after the "
        "load ended; drain = time the aggregator needed afterwards to index the rest of the backlog",
        caption_justify="left",
    )
    for column in ("condition", "load bundles/s", "samples", "p50 ms", "p99 ms", "max ms", "drain s", "target"):
        table.add_column(column, justify="left" if column in ("condition", "target") else "right")
    for key in ("idle", "steady", "saturated"):
        r = results[key]
        table.add_row(
            r.get("label", "idle"),
            f"{r['load_bundles_per_s']:,.0f}" if "load_bundles_per_s" in r else "",
            str(r["samples"]),
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{r['max_ms']:.1f}",
            f"{r['drain_s']:.1f}" if "drain_s" in r else "",
            "information: overload (see above)"
            if key == "saturated"
            else f"p99 < {VISIBILITY_TARGET_MS:,} ms {verdict(r['p99_ms'] < VISIBILITY_TARGET_MS)}",
        )
    return table


def runlist_table(result: dict[str, Any], data: IndexData, number: str) -> Table:
    load = result["load"]
    rows = len(data.rows)
    load_text = (
        f"bulk load: {rows:,} rows in {load['rows_s']:.1f} s ({rows / load['rows_s']:,.0f} rows/s), secondary "
        f"indexes rebuilt in {load['indexes_s']:.1f} s"
        + (f", ANALYZE {load['analyze_s']:.1f} s" if "analyze_s" in load else ", no ANALYZE (the server runs none)")
        + f"; database {result['db_bytes'] / 2**20:,.0f} MiB; summaries average {data.summary_bytes:,.0f} bytes"
    )
    table = Table(
        title=f"{number}. Run list, {result['backend']}, {rows:,} indexed executions",
        title_justify="left",
        caption=f"{load_text}. GET /v1/projects/{{id}}/runs, limit 50 unless said, one request at a time over one "
        "keep-alive connection; matching = rows of the project the filter matches; vs base = p50 ÷ the baseline p50",
        caption_justify="left",
    )
    for column in ("query", "matching", "returned", "p50 ms", "p95 ms", "vs base", "runs", "target"):
        table.add_column(column, justify="left" if column in ("query", "target") else "right")
    base = next(q for q in result["queries"] if q["baseline"])
    for q in result["queries"]:
        target = ""
        if not q["baseline"]:
            note = " (text)" if q["text"] else ""
            target = f"p95 < {RUNLIST_P95_TARGET_MS} ms{note} {verdict(q['p95_ms'] < RUNLIST_P95_TARGET_MS)}"
        table.add_row(
            escape(q["label"]),
            "" if q["baseline"] else f"{q['matching']:,}",
            str(q["returned"]),
            f"{q['p50_ms']:.1f}",
            f"{q['p95_ms']:.1f}",
            "baseline" if q["baseline"] else f"{q['p50_ms'] / base['p50_ms']:.1f}",
            str(q["repeats"]),
            target,
        )
    return table


def collect_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    targets = []

    def add(name: str, value: float, limit: float, unit: str, *, higher: bool = False) -> None:
        sign = "≥" if higher else "<"
        ok = value >= limit * 0.98 if higher else value < limit
        targets.append({"target": f"{name} {sign} {limit:,} {unit}", "measured": value, "unit": unit, "pass": ok})

    levels = results["ingest"]["levels"]
    saturated = [level for level in LEVELS if level.batch > 1 and level.closed]
    best = max(saturated, key=lambda level: levels[level.name]["bundles_per_s"])
    add(
        f"durable ingest, best closed loop ({best.name})",
        levels[best.name]["bundles_per_s"],
        INGEST_TARGET_PER_S,
        "bundles/s",
        higher=True,
    )
    for level in LEVELS:
        if not level.closed:
            add(f"ack p99, {level.name}", levels[level.name]["p99_ms"], ACK_P99_TARGET_MS, "ms")
    for level in saturated:  # not a target: a saturated closed loop's latency is in flight / rate (Little's law)
        needed = level.shippers * level.batch / (ACK_P99_TARGET_MS / 1000)
        targets.append(
            {
                "target": f"(saturation, not a target) ack p99, {level.name}: a mean under {ACK_P99_TARGET_MS} ms "
                f"needs ≥ {needed:,.0f} bundles/s",
                "measured": levels[level.name]["p99_ms"],
                "unit": "ms",
                "pass": None,
            }
        )
    for key in ("idle", "steady"):
        label = results["visibility"][key].get("label", "idle").split(":")[0]
        add(f"ack to visible p99, {label}", results["visibility"][key]["p99_ms"], VISIBILITY_TARGET_MS, "ms")
    saturated = results["visibility"]["saturated"]
    targets.append(
        {
            "target": "(overload, not a target) ack to visible p99, saturated at "
            f"{saturated['load_bundles_per_s']:,.0f} bundles/s: the lag grows while the edge acks faster than "
            "the aggregator indexes",
            "measured": saturated["p99_ms"],
            "unit": "ms",
            "pass": None,
        }
    )
    for runlist in results["runlist"]:
        if "skipped" in runlist:
            continue
        queries = [q for q in runlist["queries"] if not q["baseline"]]
        plain = max((q for q in queries if not q["text"]), key=lambda q: q["p95_ms"])
        add(
            f"run list p95, {runlist['backend']}, worst filter/page ({plain['label']})",
            plain["p95_ms"],
            RUNLIST_P95_TARGET_MS,
            "ms",
        )
        for q in queries:
            if q["text"]:
                add(f"run list p95, {runlist['backend']}, {q['label']}", q["p95_ms"], RUNLIST_P95_TARGET_MS, "ms")
    return targets


# ------------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------------


def run_all(settings: Settings, workdir: Path, console: Console) -> dict[str, Any]:
    results: dict[str, Any] = {
        "mode": "quick" if settings is QUICK else "full",
        "python": platform.python_version(),
        "fluxrun": fluxrun.__version__,
        "cpus": os.cpu_count(),
    }
    phases: dict[str, float] = {}
    results["phases_s"] = phases
    mark = perf()

    def phase(name: str) -> None:
        nonlocal mark
        phases[name] = perf() - mark
        mark = perf()

    capture_key, _replay_key = generate_keys(workdir / "keys")
    sealer = Sealer(load_capture_key(capture_key), sdk="bench", project="bench/shop")
    factory = BundleFactory(sealer, seed=7)
    sizes = [len(factory.one()[1]) for _ in range(200)]
    results["bundle_bytes"] = {"mean": statistics.mean(sizes), "min": min(sizes), "max": max(sizes)}

    data_dir = workdir / "ingest-server"
    console.print("[bold]1.[/bold] raw fsync rate ...")
    results["fsync"] = measure_fsync(data_dir, settings.fsync_ops)
    console.print(fsync_table(results["fsync"]))

    creds = provision(f"sqlite:///{(data_dir / 'index.db').resolve()}", capture_key)
    server = ServerProcess(data_dir)
    server.start()
    shipper: ShipperProcess | None = None
    try:
        shipper = ShipperProcess(server)
        shipper.token = creds.ingest_token
        console.print("[bold]2.[/bold] ingest throughput, shippers in a child process ...")
        phase("setup")
        results["ingest"] = measure_ingest(settings, server, shipper, factory, workdir, console)
        phase("ingest")
        console.print(ingest_table(results["ingest"], results["fsync"], settings, results["bundle_bytes"]["mean"]))
        console.print("[bold]3.[/bold] ack to query visibility ...")
        best = max(r["bundles_per_s"] for r in results["ingest"]["levels"].values())
        results["visibility"] = measure_visibility(settings, server, shipper, creds, factory, workdir, console, best)
        console.print(visibility_table(results["visibility"]))
        phase("visibility")
        results["ingest_server"] = server.health()
    finally:
        if shipper is not None:
            shipper.close()
        server.stop()
    shutil.rmtree(data_dir, ignore_errors=True)

    console.print(f"[bold]4.[/bold] run-list queries: generating {settings.runlist_rows:,} executions ...")
    data = generate_index(settings.runlist_rows, project_id=1)
    results["runlist_generate_s"] = data.generate_s
    console.print(f"  generated in {data.generate_s:.1f} s")
    phase("runlist generate")
    results["runlist"] = []
    sqlite_result = measure_runlist_sqlite(settings, data, capture_key, workdir, console)
    results["runlist"].append(sqlite_result)
    console.print(runlist_table(sqlite_result, data, "4a"))
    shutil.rmtree(workdir / "runlist-sqlite", ignore_errors=True)
    phase("runlist SQLite")
    pg_result = measure_runlist_postgres(settings, data, capture_key, workdir, console)
    results["runlist"].append(pg_result)
    if "skipped" not in pg_result:
        console.print(runlist_table(pg_result, data, "4b"))
    phase("runlist PostgreSQL")

    results["targets"] = collect_targets(results)
    console.print(targets_table(results["targets"], settings is QUICK, quick_note="few samples, 100,000 rows, noisy"))
    return results


def parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fast smoke run (few samples, 100,000 rows, noisy)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument(
        "--log",
        choices=("wal", "nats"),
        default="wal",
        help="nats: the embedded WAL beside NATS JetStream with 1 and 3 edge nodes (benchmarks/ingest_log.py)",
    )
    internal = parser.add_argument_group("internal (the shipper child process)")
    internal.add_argument("--shipper", action="store_true", help=argparse.SUPPRESS)
    internal.add_argument("--url", help=argparse.SUPPRESS)
    internal.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(list(argv) if argv is not None else None)


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    if args.shipper:
        return shipper_main(args)
    settings = QUICK if args.quick else FULL
    console = Console(width=None if sys.stdout.isatty() else 160)
    if args.log == "nats":
        import ingest_log

        return ingest_log.main(console, args.json, quick=args.quick)
    console.print(
        f"FluxRun {fluxrun.__version__} server ingest benchmark ({'quick' if args.quick else 'full'}), "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    started = now_ns()
    workdir = Path(tempfile.mkdtemp(prefix="fluxrun-bench-ingest-"))
    try:
        results = run_all(settings, workdir, console)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["elapsed_s"] = (now_ns() - started) / 1e9
    phases = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in results["phases_s"].items())
    console.print(f"done in {results['elapsed_s']:.1f} s ({phases})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
        console.print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
