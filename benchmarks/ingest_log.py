"""`benchmarks/ingest.py --log nats`: ingest throughput, ack latency and CPU per bundle per component, for the
embedded WAL beside the distributed log (NATS JetStream, 3 servers, 3 replicas), in one run on this machine.

Setups, each fresh (its own data folder, or its own NATS cluster, database and bucket):

1. the embedded default: one `fluxrun server` (WAL with fsync, SQLite, data folder) and its aggregator process;
2. NATS JetStream R3 with 1 edge node, and 3. with 3 edge nodes: `fluxrun server` edges, 2
   `fluxrun server aggregate` processes, PostgreSQL and S3;
4. as 3, with the project on a plan with a daily quota, so every request also reserves its bundles in
   PostgreSQL (the exact cross-node quota).

Each setup gets the same two loads of the same realistic ~4 KiB sealed bundles (benchmarks/ingest.py's
`BundleFactory`), sent round-robin over its edge nodes by shippers in this process (ingest.py's light HTTP/1.1
client, so the load generator takes little of the two cores):

- saturation: SHIPPERS closed-loop shippers, each POSTing its next batch of BATCH bundles as soon as the last
  was acknowledged; bundles/s and ack p50/p99 over the window after a warm-up. Then the benchmark waits until
  the index holds every acknowledged bundle (a count in the index database). CPU per component is read from
  /proc from the start of the load to that point and divided by the bundles acknowledged: edges, aggregators,
  nats-server (all three, and the busiest one, the stream's leader), PostgreSQL (postmaster and every
  backend), moto's S3 server, the shippers, and what other processes on this shared machine used meanwhile.
- paced: an open loop offering PACED_BUNDLES_PER_S in requests of BATCH, latency from each request's
  scheduled send (a stall counts against it), at a rate every setup sustains: ack latency without queueing.

Before its loads each setup idles IDLE_S seconds, and the CPU its processes use then (timers, heartbeats,
stream-info polls) is printed: it is inside the per-bundle figures, which are therefore on the high side.

PostgreSQL is a throwaway cluster (tests/support/postgres.py) restarted with fsync on (the test helper turns it
off); moto's S3 server runs as its own process. Both, like NATS, share this machine's two cores with the nodes,
so the figures are what one box gives, not what separate machines would: the CPU per bundle is the figure to
carry to a deployment, and the benchmark prints a capacity model for TARGET_BUNDLES_PER_S from it.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "support"), str(ROOT / "tests" / "scale")]

from harness import free_port, percentile  # noqa: E402
from ingest import BundleFactory, HttpConnection  # noqa: E402 - benchmarks/ingest.py
from nats_cluster import NatsCluster  # noqa: E402 - test helpers: real nats-server processes
from postgres import Cluster, start_cluster  # noqa: E402 - a throwaway PostgreSQL cluster

from fluxrun.bundle import Sealer, generate_keys, load_capture_key, signing_public_key  # noqa: E402
from fluxrun_server.ingest.batch import encode_batch  # noqa: E402

__all__ = ["main"]

SHIPPERS = 8
BATCH = 20
PACED_BUNDLES_PER_S = 400
PACED_IN_FLIGHT = 32
TICK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT_S = 180.0  # several Python servers importing at once on a busy 2-core machine
DRAIN_TIMEOUT_S = 300.0
IDLE_S = 3.0  # each setup's CPU with no load, measured this long before its load

# The capacity model: the measured CPU per bundle carried to this rate, on nodes of this many cores, run at
# this share of their CPU (headroom for bursts, a node lost, GC and compaction).
TARGET_BUNDLES_PER_S = 100_000
CORES_PER_NODE = 8
UTILISATION = 0.6
MODEL_SETUP = "NATS R3, 3 edge nodes"
QUOTA_SETUP = "NATS R3, 3 edge nodes, daily quota"


@dataclass(frozen=True)
class Settings:
    warmup_s: float
    window_s: float
    paced_s: float
    pool_bundles: int  # sealed for the saturation load; a setup that exhausts them ends its window early


FULL = Settings(warmup_s=3.0, window_s=12.0, paced_s=8.0, pool_bundles=120_000)
QUICK = Settings(warmup_s=1.0, window_s=3.0, paced_s=2.0, pool_bundles=24_000)


# ------------------------------------------------------------------------------------------------------
# CPU from /proc
# ------------------------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def _cpu(pid: int, children: bool = False) -> float:
    """CPU seconds of a process, all threads (with `children`, also of its reaped children)."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if children else 0)
    return ticks / TICK


def _descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            parents[int(entry)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        kids = [child for child, parent in parents.items() if parent == current]
        found += kids
        frontier += kids
    return found


def machine_busy_s() -> float:
    """CPU seconds every process on the machine has used since boot (all cores), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / TICK


@dataclass
class Component:
    name: str
    pids: list[int]
    tree: bool = False  # also live descendants and reaped children (PostgreSQL's backends)

    def cpu_each(self) -> list[float]:
        out = []
        for pid in self.pids:
            total = _cpu(pid, children=self.tree)
            if self.tree:
                total += sum(_cpu(child) for child in _descendants(pid))
            out.append(total)
        return out


@dataclass
class Setup:
    name: str
    edges: list[str]
    token: str
    components: list[Component]
    indexed: Callable[[], int]  # bundles the index holds
    storage: Callable[[], dict[str, float]] = dict  # sizes that grow with the bundles (PostgreSQL, S3)


# ------------------------------------------------------------------------------------------------------
# The loads
# ------------------------------------------------------------------------------------------------------


def _connections(edges: list[str], token: str, count: int) -> list[HttpConnection]:
    headers = {"authorization": f"Bearer {token}", "content-type": "application/x-fluxrun-batch"}
    out = []
    for i in range(count):
        host, port = edges[i % len(edges)].removeprefix("http://").rsplit(":", 1)
        out.append(HttpConnection(host, int(port), headers))
    return out


async def _post(connection: HttpConnection, body: bytes) -> tuple[int, int]:
    import orjson

    try:
        status, data = await connection.request("POST", "/v1/executions", body)
    except (OSError, ConnectionError, asyncio.IncompleteReadError):
        await connection.close()
        return 0, 0
    return status, len(orjson.loads(data)["accepted"]) if status == 202 else 0


async def saturate(edges: list[str], token: str, bodies: list[bytes], settings: Settings) -> dict[str, Any]:
    """SHIPPERS closed loops, shipper i on edge i mod len(edges); window figures and every bundle acknowledged."""
    connections = _connections(edges, token, SHIPPERS)
    records: list[tuple[float, float, int, int]] = []  # (sent, done, status, accepted)
    state = {"next": 0, "exhausted_at": math.inf}
    start = time.perf_counter()
    measure_from = start + settings.warmup_s
    end = measure_from + settings.window_s

    async def shipper(connection: HttpConnection) -> None:
        while time.perf_counter() < end:
            index = int(state["next"])
            if index >= len(bodies):
                state["exhausted_at"] = min(state["exhausted_at"], time.perf_counter())
                return
            state["next"] = index + 1
            sent = time.perf_counter()
            status, accepted = await _post(connection, bodies[index])
            records.append((sent, time.perf_counter(), status, accepted))

    await asyncio.gather(*(shipper(c) for c in connections))
    for connection in connections:
        await connection.close()
    window_end = min(end, state["exhausted_at"])
    window = [r for r in records if measure_from <= r[1] <= window_end]
    seconds = max(1e-9, window_end - measure_from)
    latencies = [(r[1] - r[0]) * 1000 for r in window if r[2] == 202]
    return {
        "bundles_per_s": sum(r[3] for r in window) / seconds,
        "requests_per_s": len(latencies) / seconds,
        "ack_p50_ms": percentile(latencies, 50),
        "ack_p99_ms": percentile(latencies, 99),
        "failed_requests": sum(1 for r in window if r[2] != 202),
        "window_s": seconds,
        "exhausted": window_end < end,
        "acknowledged": sum(r[3] for r in records),
    }


async def paced(edges: list[str], token: str, bodies: list[bytes], settings: Settings) -> dict[str, Any]:
    """An open loop of PACED_BUNDLES_PER_S in requests of BATCH; latency from each request's scheduled send."""
    idle: asyncio.Queue[HttpConnection] = asyncio.Queue()
    for connection in _connections(edges, token, PACED_IN_FLIGHT):
        idle.put_nowait(connection)
    records: list[tuple[float, float, int]] = []
    start = time.perf_counter()
    measure_from = start + 1.0
    end = measure_from + settings.paced_s
    interval = BATCH / PACED_BUNDLES_PER_S

    async def send(body: bytes, at: float) -> None:
        connection = await idle.get()  # waiting for a free connection counts as latency
        try:
            status, _ = await _post(connection, body)
        finally:
            idle.put_nowait(connection)
        records.append((at, time.perf_counter(), status))

    tasks = []
    for i, body in enumerate(bodies):
        at = start + i * interval
        if at >= end:
            break
        if at > time.perf_counter():
            await asyncio.sleep(at - time.perf_counter())
        tasks.append(asyncio.create_task(send(body, at)))
    await asyncio.gather(*tasks)
    while not idle.empty():
        await idle.get_nowait().close()
    window = [r for r in records if r[0] >= measure_from]
    latencies = [(r[1] - r[0]) * 1000 for r in window if r[2] == 202]
    return {
        "paced_p50_ms": percentile(latencies, 50),
        "paced_p99_ms": percentile(latencies, 99),
        "paced_failed": sum(1 for r in window if r[2] != 202),
    }


def measure(setup: Setup, saturation_bodies: list[bytes], paced_bodies: list[bytes], settings: Settings) -> dict:
    time.sleep(2.0)  # start-up work (migrations, connections, stream creation) settles out of the count
    idle_from = {c.name: sum(c.cpu_each()) for c in setup.components}
    time.sleep(IDLE_S)
    cpu_before = {c.name: c.cpu_each() for c in setup.components}
    idle = {name: (sum(cpu_before[name]) - spent) / IDLE_S * 1000 for name, spent in idle_from.items()}
    busy_before, own_before, started = machine_busy_s(), time.process_time(), time.perf_counter()
    storage_before = setup.storage()
    result = asyncio.run(saturate(setup.edges, setup.token, saturation_bodies, settings))
    acknowledged = result["acknowledged"]
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while (indexed := setup.indexed()) < acknowledged and time.monotonic() < deadline:
        time.sleep(0.25)
    result["drained"] = indexed >= acknowledged
    result["drain_s"] = time.perf_counter() - started - settings.warmup_s - settings.window_s
    elapsed = time.perf_counter() - started
    busy, own = machine_busy_s() - busy_before, time.process_time() - own_before
    per_1000 = 1e6 / max(1, acknowledged)  # CPU seconds -> ms per 1,000 bundles
    cpu: dict[str, float] = {}
    leader = 0.0
    for component in setup.components:
        spent = [after - before for after, before in zip(component.cpu_each(), cpu_before[component.name], strict=True)]
        cpu[component.name] = sum(spent) * per_1000
        if component.name.startswith("nats"):
            leader = max(spent) * per_1000
    ours = sum(cpu.values()) / per_1000 + own
    cpu["shippers"] = own * per_1000
    result["cpu_ms_per_1000"] = cpu
    result["nats_busiest_ms_per_1000"] = leader
    result["other_processes_cores"] = max(0.0, busy - ours) / elapsed
    result["span_s"] = elapsed
    result["idle_ms_per_s"] = idle  # background work with no load (timers, heartbeats): inside the figures above
    storage_after = setup.storage()
    result["storage_per_bundle"] = {
        k: (storage_after[k] - storage_before.get(k, 0.0)) / max(1, acknowledged) for k in storage_after
    }
    result.update(asyncio.run(paced(setup.edges, setup.token, paced_bodies, settings)))
    return result


# ------------------------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------------------------


def _log_tail(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-3000:]


@contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_server(procs: list[subprocess.Popen[bytes]], env: dict[str, str], command: list[str]) -> None:
    """`fluxrun server [command]`, waited for: /healthz for an edge, its ready line for an aggregator."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 - the process's output, read only to report a failure
    proc = subprocess.Popen(
        [sys.executable, "-m", "fluxrun.cli.app", "server", *command],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    procs.append(proc)
    url = f"http://127.0.0.1:{env['FLUXRUN_SERVER_PORT']}" if not command else None
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"fluxrun server {' '.join(command)} exited:\n{_log_tail(log)}")
        if url is not None:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        elif "pulling from the log" in _log_tail(log):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"fluxrun server {' '.join(command)} did not start:\n{_log_tail(log)}")
        time.sleep(0.2)


def start_postgres() -> tuple[Cluster, int]:
    """The tests' throwaway cluster, restarted with fsync on (as a deployment runs it); (cluster, postmaster pid)."""
    pg = start_cluster()
    data = pg.folder / "data"
    options = f"-p {pg.port} -k {pg.folder / 'run'} -c listen_addresses=127.0.0.1"
    restart = [str(pg.bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(pg.folder / "log"), "-w"]
    subprocess.run([*pg.as_user, *restart, "restart"], capture_output=True, check=True)
    import psycopg

    with psycopg.connect(pg.admin_url) as conn:
        fsync = conn.execute("SHOW fsync").fetchone()
    if fsync is None or fsync[0] != "on":
        raise RuntimeError(f"PostgreSQL did not come back with fsync on: {fsync}")
    return pg, int((data / "postmaster.pid").read_text().split()[0])


@contextmanager
def moto_server() -> Iterator[tuple[str, int]]:
    """moto's S3 server as its own process (its CPU counted apart, not competing with the shippers' GIL)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/", timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(20)


def provision(database_url: str, key: Path, quota: int | None = None) -> str:
    """Workspace bench, project bench/shop with the capture key; its ingest token. With `quota`, a plan with it."""
    from sqlmodel import Session

    from fluxrun_server import admin
    from fluxrun_server.control import ops
    from fluxrun_server.index.database import make_engine, migrate

    engine = make_engine(database_url)
    try:
        migrate(engine)
        with Session(engine) as session:
            admin.create_workspace(session, "bench")
            admin.create_project(session, "bench", "shop")
            key_id, public = signing_public_key(load_capture_key(key))
            admin.register_key(session, "bench/shop", f"{key_id}:{public}")
            if quota is not None:
                operator = ops.Actor.operator()
                ops.create_plan(session, operator, "metered", bundles_per_day=quota)
                ops.set_project_plan(session, operator, admin.project_id(session, "bench/shop"), "metered")
            return admin.issue_token(session, "bench/shop").secret
    finally:
        engine.dispose()


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def pg_indexed(url: str) -> int:
    import psycopg

    with psycopg.connect(_libpq(url)) as conn:
        row = conn.execute("SELECT count(*) FROM execution").fetchone()
    return int(row[0]) if row else 0


def pg_storage(url: str, s3: str, bucket: str) -> dict[str, float]:
    """PostgreSQL's WAL position and database size, and the bucket's objects and bytes."""
    import boto3
    import psycopg

    with psycopg.connect(_libpq(url)) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn, pg_database_size(current_database())")
        wal, size = row.fetchone() or (0, 0)
    client = boto3.client(
        "s3", endpoint_url=s3, aws_access_key_id="t", aws_secret_access_key="t", region_name="us-east-1"
    )
    objects = 0
    stored = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            objects += 1
            stored += int(item["Size"])
    return {"pg_wal_bytes": float(wal), "pg_database_bytes": float(size), "s3_objects": objects, "s3_bytes": stored}


def sqlite_indexed(path: Path) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as conn:
        return int(conn.execute("SELECT count(*) FROM execution").fetchone()[0])


# ------------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------------


def run(console: Any, settings: Settings) -> dict[str, Any]:
    """Every setup in one run; returns {setup name: result}. Keys and data folders are removed at the end."""
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    work = Path(tempfile.mkdtemp(prefix="fluxrun-bench-log-"))
    try:
        return _run_in(work, console, settings)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_in(work: Path, console: Any, settings: Settings) -> dict[str, Any]:
    key, _replay_key = generate_keys(work / "keys")
    factory = BundleFactory(Sealer(load_capture_key(key), sdk="bench", project="bench/shop"), seed=20261205)
    paced_count = int(PACED_BUNDLES_PER_S * (settings.paced_s + 1.5))
    console.print(f"sealing {settings.pool_bundles:,} + {paced_count:,} bundles ...")
    pool = factory.many(settings.pool_bundles + paced_count)
    saturation_bodies = [encode_batch(pool[i : i + BATCH]) for i in range(0, settings.pool_bundles, BATCH)]
    paced_bodies = [encode_batch(pool[i : i + BATCH]) for i in range(settings.pool_bundles, len(pool), BATCH)]
    del pool
    results: dict[str, Any] = {}
    pg, postmaster = start_postgres()
    try:
        with moto_server() as (s3, moto_pid):
            # 1. the embedded default: one process, local WAL + fsync, SQLite, its own aggregator process
            with processes() as procs:
                port = free_port()
                data = work / "embedded"
                data.mkdir()
                env = {"FLUXRUN_SERVER_DATA_DIR": str(data), "FLUXRUN_SERVER_PORT": str(port)}
                env["FLUXRUN_SERVER_DATABASE_URL"] = f"sqlite:///{data / 'index.db'}"
                token = provision(env["FLUXRUN_SERVER_DATABASE_URL"], key)
                start_server(procs, env, [])
                url = f"http://127.0.0.1:{port}"
                aggregator = int(httpx.get(url + "/healthz", timeout=10).json()["aggregator"]["pid"])
                setup = Setup(
                    "embedded WAL, 1 node",
                    [url],
                    token,
                    [Component("edges", [procs[0].pid]), Component("aggregators", [aggregator])],
                    lambda: sqlite_indexed(data / "index.db"),
                )
                console.print(f"measuring {setup.name} ...")
                results[setup.name] = measure(setup, saturation_bodies, paced_bodies, settings)
            # 2-4. NATS JetStream, 3 servers, 3 replicas; PostgreSQL; S3; 1 or 3 edges, 2 aggregators
            for edges_count, quota in ((1, None), (3, None), (3, 10**9)):
                name = f"NATS R3, {edges_count} edge node{'s' if edges_count > 1 else ''}"
                name += ", daily quota" if quota else ""
                results[name] = _measure_nats(
                    name,
                    edges_count,
                    quota,
                    pg,
                    postmaster,
                    (s3, moto_pid),
                    key,
                    work,
                    console,
                    (saturation_bodies, paced_bodies, settings),
                )
    finally:
        pg.stop()
    return results


def _measure_nats(
    name: str,
    edges_count: int,
    quota: int | None,
    pg: Cluster,
    postmaster: int,
    moto: tuple[str, int],
    key: Path,
    work: Path,
    console: Any,
    load: tuple[list[bytes], list[bytes], Settings],
) -> dict[str, Any]:
    import boto3
    import psycopg

    s3, moto_pid = moto
    nats = NatsCluster(size=3)
    nats.start()
    try:
        with processes() as procs:
            database = f"fluxrun_bench_{secrets.token_hex(3)}"
            with psycopg.connect(pg.admin_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{database}"')
            bucket = f"bench-{secrets.token_hex(3)}"
            boto3.client(
                "s3", endpoint_url=s3, aws_access_key_id="t", aws_secret_access_key="t", region_name="us-east-1"
            ).create_bucket(Bucket=bucket)
            env = {
                "FLUXRUN_SERVER_LOG_URL": nats.url,
                "FLUXRUN_SERVER_DATABASE_URL": pg.database_url(database),
                "FLUXRUN_SERVER_OBJECT_STORE_URL": f"s3://{bucket}/b",
                "FLUXRUN_SERVER_S3_ENDPOINT_URL": s3,
                "FLUXRUN_SERVER_S3_REGION": "us-east-1",
                "FLUXRUN_SERVER_S3_ACCESS_KEY": "t",
                "FLUXRUN_SERVER_S3_SECRET_KEY": "t",
                "AWS_EC2_METADATA_DISABLED": "true",
            }
            token = provision(env["FLUXRUN_SERVER_DATABASE_URL"], key, quota)
            urls = []
            for i in range(edges_count):
                port = free_port()
                node_env = {**env, "FLUXRUN_SERVER_DATA_DIR": str(work / f"{database}-e{i}")}
                node_env["FLUXRUN_SERVER_PORT"] = str(port)
                start_server(procs, node_env, [])
                urls.append(f"http://127.0.0.1:{port}")
            for i in range(2):
                start_server(procs, {**env, "FLUXRUN_SERVER_DATA_DIR": str(work / f"{database}-a{i}")}, ["aggregate"])
            components = [
                Component("edges", [p.pid for p in procs[:edges_count]]),
                Component("aggregators", [p.pid for p in procs[edges_count:]]),
                Component("nats-server", [n.proc.pid for n in nats.nodes if n.proc is not None]),
                Component("PostgreSQL", [postmaster], tree=True),
                Component("S3 (moto)", [moto_pid]),
            ]
            url = env["FLUXRUN_SERVER_DATABASE_URL"]
            setup = Setup(name, urls, token, components, lambda: pg_indexed(url), lambda: pg_storage(url, s3, bucket))
            console.print(f"measuring {setup.name} ...")
            return measure(setup, *load)
    finally:
        nats.stop()


# ------------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------------

MODEL_COMPONENTS = ("edges", "aggregators", "nats-server", "PostgreSQL")


def capacity_model(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Cores and nodes for TARGET_BUNDLES_PER_S from the measured CPU per bundle (MODEL_SETUP's, PostgreSQL's
    from QUOTA_SETUP when measured: a deployment with quotas pays the reservation)."""
    if MODEL_SETUP not in results:
        return []
    rows = []
    for component in MODEL_COMPONENTS:
        source = QUOTA_SETUP if component == "PostgreSQL" and QUOTA_SETUP in results else MODEL_SETUP
        ms = results[source]["cpu_ms_per_1000"][component]
        busy = ms / 1000 * TARGET_BUNDLES_PER_S / 1000  # cores kept busy at the target rate
        cores = busy / UTILISATION
        rows.append(
            {
                "component": component,
                "source": source,
                "ms_per_1000": ms,
                "busy_cores": busy,
                "cores": cores,
                "nodes": max(1, math.ceil(cores / CORES_PER_NODE)),
            }
        )
    busiest = results[MODEL_SETUP]["nats_busiest_ms_per_1000"]
    busy = busiest / 1000 * TARGET_BUNDLES_PER_S / 1000
    rows.append(
        {
            "component": "one stream: its leader (busiest nats-server)",
            "source": MODEL_SETUP,
            "ms_per_1000": busiest,
            "busy_cores": busy,
            "cores": busy / UTILISATION,
            "nodes": 1,
        }
    )
    return rows


def report(results: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    table = Table(
        title=f"ingest on each log: saturation = {SHIPPERS} closed-loop shippers x batches of {BATCH}; "
        f"paced = open loop of {PACED_BUNDLES_PER_S} bundles/s"
    )
    for column in (
        "setup",
        "bundles/s",
        "requests/s",
        "ack p50 ms",
        "ack p99 ms",
        "failed",
        "paced p50 / p99 ms",
        "drain s",
    ):
        table.add_column(column, justify="left" if column == "setup" else "right")
    for name, r in results.items():
        table.add_row(
            name,
            f"{r['bundles_per_s']:,.0f}" + (" (pool used up)" if r["exhausted"] else ""),
            f"{r['requests_per_s']:,.0f}",
            f"{r['ack_p50_ms']:.1f}",
            f"{r['ack_p99_ms']:.1f}",
            f"{r['failed_requests']} / {r['paced_failed']}",
            f"{r['paced_p50_ms']:.1f} / {r['paced_p99_ms']:.1f}",
            f"{r['drain_s']:.1f}" + ("" if r["drained"] else " (not drained)"),
        )
    console.print(table)

    cpu = Table(
        title="CPU ms per 1,000 acknowledged bundles, from the load's start until the index held them all",
        caption="sum: edges + aggregators + nats-server (all 3) + PostgreSQL. S3 (moto) and the shippers stand for "
        "what a deployment runs elsewhere. nats leader: the busiest nats-server. others: cores (of "
        f"{os.cpu_count()}) that other processes on this shared machine used meanwhile",
    )
    for column in (
        "setup",
        "edges",
        "aggregators",
        "nats-server",
        "nats leader",
        "PostgreSQL",
        "sum",
        "S3 (moto)",
        "shippers",
        "others",
    ):
        cpu.add_column(column, justify="left" if column == "setup" else "right")
    for name, r in results.items():
        ms = r["cpu_ms_per_1000"]
        cells = {key: f"{value:,.0f}" for key, value in ms.items()}
        total = sum(v for k, v in ms.items() if k not in ("S3 (moto)", "shippers"))
        busiest = f"{r['nats_busiest_ms_per_1000']:,.0f}" if "nats-server" in ms else "-"
        cpu.add_row(
            name,
            cells.get("edges", "-"),
            cells.get("aggregators", "-"),
            cells.get("nats-server", "-"),
            busiest,
            cells.get("PostgreSQL", "-"),
            f"{total:,.0f}",
            cells.get("S3 (moto)", "-"),
            cells.get("shippers", "-"),
            f"{r['other_processes_cores']:.2f}",
        )
    console.print(cpu)
    for name, r in results.items():
        idle = ", ".join(f"{k} {v:,.0f}" for k, v in r["idle_ms_per_s"].items())
        console.print(f"  idle CPU before the load, ms per second: {name}: {idle}")

    storage = Table(title="what each acknowledged bundle adds (NATS setups)")
    for column in ("setup", "PostgreSQL WAL bytes", "PostgreSQL database bytes", "S3 bytes", "bundles per S3 object"):
        storage.add_column(column, justify="left" if column == "setup" else "right")
    for name, r in results.items():
        s = r["storage_per_bundle"]
        if s:
            per_object = 1 / s["s3_objects"] if s["s3_objects"] else math.nan
            storage.add_row(
                name,
                f"{s['pg_wal_bytes']:,.0f}",
                f"{s['pg_database_bytes']:,.0f}",
                f"{s['s3_bytes']:,.0f}",
                f"{per_object:,.0f}",
            )
    console.print(storage)

    rows = capacity_model(results)
    if rows:
        model = Table(
            title=f"capacity model: {TARGET_BUNDLES_PER_S:,} bundles/s, nodes of {CORES_PER_NODE} cores "
            f"run at {UTILISATION:.0%} CPU"
        )
        for column in ("component", "from", "CPU ms per 1,000", "cores busy", "cores provisioned", "nodes"):
            model.add_column(column, justify="left" if column in ("component", "from") else "right")
        for row in rows:
            model.add_row(
                row["component"],
                row["source"],
                f"{row['ms_per_1000']:,.0f}",
                f"{row['busy_cores']:,.1f}",
                f"{row['cores']:,.1f}",
                str(row["nodes"]),
            )
        console.print(model)


def main(console: Any, json_path: Path | None = None, quick: bool = False) -> int:
    started = datetime.now(UTC)
    load = Path("/proc/loadavg").read_text().split()[:3]
    console.print(
        f"{started:%Y-%m-%d %H:%M} UTC, load average {' / '.join(load)} at start, {os.cpu_count()} cores"
        f", {'quick' if quick else 'full'} run"
    )
    results = run(console, QUICK if quick else FULL)
    report(results, console)
    load = Path("/proc/loadavg").read_text().split()[:3]
    elapsed = (datetime.now(UTC) - started).total_seconds()
    console.print(f"done in {elapsed:.0f} s, {datetime.now(UTC):%H:%M} UTC, load average {' / '.join(load)} at end")
    if json_path is not None:
        import orjson

        payload = {"started": started.isoformat(), "results": results, "model": capacity_model(results)}
        json_path.write_bytes(orjson.dumps(payload, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return 0


if __name__ == "__main__":
    from rich.console import Console

    sys.exit(main(Console(width=160)))
