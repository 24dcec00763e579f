"""FluxRun replay speed: how long serving a recorded failure again takes, against baselines from the same run.

Sections:

1. Replay time per bundle after start-up, by number of recorded calls. A small app module (written to a
   temporary folder and imported from there, so replay can import the captured function's entry point)
   has one `@fluxrun.capture`d function making N recorded calls, then raising. The mix: N=1 is one httpx
   GET; N=10 and N=100 are one `os.environ.get`, one `time.time()` and N-2 httpx GETs, all through one
   module-level `httpx.Client` with an `httpx.MockTransport`. One bundle per N is captured, opened once
   with `open_bundle`, and `fluxrun.replay.run(opened, key)` is timed repeatedly (median, p95; a few
   untimed warm-up replays first). Beside it, in the same run: the function called directly without
   FluxRun (its own cost, against the live MockTransport), the same replay with the module switched to
   FIXED (the guard's path: returns normally, outcome "fixed"), the replay with the interceptors held
   installed around the loop (what `run` pays per call to install and restore every patch), and
   `run(bundle_bytes, key)` (open included). The timed replay is the in-process one (`isolate=False`);
   beside it, the default isolated replay (`isolate=True`: a forked child with its own network
   namespace, seccomp filter and audit hook). Target: under 2 ms + 0.3 ms per recorded call.
2. VCR.py playback of the same HTTP exchanges (1, 8 and 98 GETs). A stdlib `http.server` on 127.0.0.1
   (port 0, in a thread) answers the same JSON; vcrpy records one cassette per N through a real
   `httpx.Client`; the server is then stopped, and each cassette is played back under
   `use_cassette(..., record_mode="none")`, checking `play_count` and `all_played` every time. Timed:
   the requests inside the loaded cassette ("play"), and the whole `with` block ("load + play": the
   YAML cassette is read and parsed on entry). Ratios: FluxRun `run(opened)` / VCR play, and FluxRun
   `run(bytes)` (decrypt included) / VCR load + play.
3. Wall time of one pytest run replaying a folder of bundles as guards. 1,000 failing executions (100
   with --quick) of the same function with 5 recorded calls each (env, time, 3 GETs), each with distinct
   arguments, are captured into `project/bundles`; the project folder holds the module edited to
   FIXED = True, so every guard passes. Timed from outside as a subprocess:
   `python -m pytest -q -p no:cacheprovider --fluxrun-bundles bundles bundles` (the trailing `bundles`
   means only the guards are collected), with FLUXRUN_REPLAY_KEY set; the baseline is the same command
   on an empty folder (pytest's and the plugin's start-up). Serially with isolation on (the default) and
   off (`FLUXRUN_REPLAY_ISOLATE=0`), and with `-n 2` (xdist) isolated;
   interleaved rounds, median wall time. Target: 1,000 replays in under 10 s (with --quick, the time is
   projected to 1,000 from the per-bundle cost).

A final table lists each target, the measured value and pass/fail.

Run (with the project installed: `pip install -e '.[test,bench]'`):

    python benchmarks/replay.py                  # full run, about 2 minutes on 2 cores
    python benchmarks/replay.py --quick          # smoke run, under 30 s, noisy numbers
    python benchmarks/replay.py --json out.json  # also write the results as JSON
    python benchmarks/replay.py --profile        # also print cProfile's top entries for one 100-call replay

Keys, the app module, bundles and cassettes live in a temporary directory that is removed at the end;
the local HTTP server listens on loopback only and is stopped before playback. FluxRun's warning that
requests and urllib3 are imported but not intercepted (vcrpy imports them; the app does not use them) is
filtered out of the output. The exit status is 0 even
when a target is missed: this is a measurement, not a gate.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import http.server
import importlib
import io
import json
import logging
import math
import os
import platform
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import vcr  # type: ignore[import-untyped]
from harness import percentile, targets_table, verdict
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import fluxrun
import fluxrun.replay
from fluxrun.bundle import generate_keys, load_replay_key, open_bundle
from fluxrun.interceptors import install

# The real clock, held in a namespace on purpose: `fluxrun.init` rebinds top-level names of app modules
# that are patched functions (`from time import perf_counter_ns`), and the timing must not go through them.
REAL = types.SimpleNamespace(clock_ns=time.perf_counter_ns)


def now_ns() -> int:
    return REAL.clock_ns()  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------------------------
# Settings
# ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    replays: tuple[int, int, int]  # timed replays per N (section 1), for N = 1, 10, 100
    variant_replays: tuple[int, int, int]  # timed runs of each side measurement (direct, fixed, held, bytes)
    vcr_playbacks: tuple[int, int, int]  # timed cassette playbacks per N (section 2)
    bundles: int  # bundles replayed by the pytest run (section 3)
    pytest_rounds: int  # interleaved rounds of (empty, bundles) per pytest configuration


FULL = Settings(
    replays=(1000, 500, 150),
    variant_replays=(300, 200, 60),
    vcr_playbacks=(200, 100, 30),
    bundles=1000,
    pytest_rounds=2,
)
QUICK = Settings(
    replays=(100, 60, 20),
    variant_replays=(40, 30, 10),
    vcr_playbacks=(30, 20, 6),
    bundles=100,
    pytest_rounds=1,
)

RECORDED_CALLS = (1, 10, 100)
BUNDLE_CALLS = 5  # section 3: env, time, 3 GETs
TARGET_BASE_MS = 2.0
TARGET_PER_CALL_MS = 0.3
PYTEST_TARGET_S = 10.0
PYTEST_TARGET_BUNDLES = 1000
PUBLISHED_VCR_100_MS = 128  # VCR.py's linear cassette search, as published, for a 100-call test

APP_MODULE = "fluxbench_replay_app"
APP_SOURCE = '''\
"""The app whose failures benchmarks/replay.py captures and replays (written by the benchmark)."""

import os
import time

import httpx

import fluxrun

FIXED = {fixed}
STOCK = {{"stock": 7, "warehouse": "ams-2", "lots": [{{"id": 1, "qty": 4}}, {{"id": 2, "qty": 3}}]}}


def inventory(request):
    """The MockTransport handler standing in for the inventory service."""
    return httpx.Response(200, json={{"path": request.url.path, **STOCK}})


client = httpx.Client(transport=httpx.MockTransport(inventory))


@fluxrun.capture
def check_stock(order, gets, reads):
    """`reads` (0 or 1) env read and clock read, then `gets` httpx GETs: gets + 2 * reads recorded calls."""
    region = os.environ.get("BENCH_REGION", "eu") if reads else "eu"
    started = time.time() if reads else 0.0
    stock = 0
    for item in range(gets):
        stock += client.get(f"http://inventory.test/orders/{{order}}/items/{{item}}").json()["stock"]
    if FIXED:
        return {{"order": order, "stock": stock, "region": region}}
    raise RuntimeError(f"order {{order}}: stock {{stock}} in {{region}} at {{started}} does not cover the order")
'''

VCR_BODY = {"stock": 7, "warehouse": "ams-2", "lots": [{"id": 1, "qty": 4}, {"id": 2, "qty": 3}]}


class DropClientGapWarning(logging.Filter):
    """vcrpy imports requests and urllib3, which FluxRun warns about at every `init`; the app never uses them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("FluxRun does not intercept these imported HTTP clients")


def mix(calls: int) -> tuple[int, int]:
    """(GETs, reads) making `calls` recorded calls: one GET alone, else an env read, a clock read and GETs."""
    return (1, 0) if calls == 1 else (calls - 2, 1)


def mix_label(calls: int) -> str:
    gets, reads = mix(calls)
    return f"{gets} GET" if not reads else f"1 env + 1 time + {gets} GET"


def write_app(folder: Path, *, fixed: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{APP_MODULE}.py"
    path.write_text(APP_SOURCE.format(fixed=fixed))
    return path


def stats_ms(samples_ns: list[int]) -> dict[str, float]:
    return {
        "median_ms": statistics.median(samples_ns) / 1e6,
        "p95_ms": percentile(samples_ns, 95) / 1e6,
        "runs": len(samples_ns),
    }


def time_runs(call: Callable[[], Any], runs: int, warmup: int = 3) -> list[int]:
    """ns of each of `runs` calls, after `warmup` untimed ones; the collector runs only between samples."""
    for _ in range(warmup):
        call()
    gc.collect()
    samples = []
    for index in range(runs):
        started = now_ns()
        call()
        samples.append(now_ns() - started)
        if index % 50 == 49:
            gc.collect()
    return samples


# ------------------------------------------------------------------------------------------------------
# Capture
# ------------------------------------------------------------------------------------------------------


def capture_bundles(app: Any, directory: Path, capture_key: Path, calls: Iterable[tuple[int, int, int]]) -> list[Path]:
    """Run `app.check_stock(order, gets, reads)` for each argument triple with FluxRun capturing; the bundles."""
    calls = list(calls)
    fluxrun.init(directory=directory, capture_key=capture_key, max_queue=max(1000, len(calls)))
    try:
        for index, (order, gets, reads) in enumerate(calls):
            try:
                app.check_stock(order, gets, reads)
            except RuntimeError:
                pass
            else:  # pragma: no cover - the module is written with FIXED = False
                raise AssertionError("the captured function did not fail")
            if index % 200 == 199:
                fluxrun.flush(timeout=60)
        if not fluxrun.flush(timeout=120):
            raise AssertionError("FluxRun did not finish writing the bundles")
    finally:
        fluxrun.shutdown()
    files = sorted(directory.glob("*.fluxrun"))
    if len(files) != len(calls):
        raise AssertionError(f"captured {len(calls)} failures but {len(files)} bundles were written")
    return files


# ------------------------------------------------------------------------------------------------------
# Section 1: replay per bundle
# ------------------------------------------------------------------------------------------------------


def measure_replay(
    settings: Settings, app: Any, bundles: dict[int, Path], replay_key: Path
) -> tuple[list[dict[str, Any]], dict[int, Any]]:
    key = load_replay_key(replay_key)
    rows = []
    opened_by_calls = {}
    for (calls, runs), side_runs in zip(
        zip(RECORDED_CALLS, settings.replays, strict=True), settings.variant_replays, strict=True
    ):
        gets, reads = mix(calls)
        data = bundles[calls].read_bytes()
        opened = open_bundle(data, key)
        opened_by_calls[calls] = opened
        recorded = [e for e in opened.payload["events"] if e["kind"] in ("http", "env", "time")]
        if len(recorded) != calls:
            raise AssertionError(f"N={calls}: the bundle holds {len(recorded)} recorded calls")

        def direct(gets: int = gets, reads: int = reads) -> None:
            with contextlib.suppress(RuntimeError):
                app.check_stock.__wrapped__(7, gets, reads)  # undecorated, FluxRun not installed

        def replay(opened: Any = opened) -> Any:
            return fluxrun.replay.run(opened, key, isolate=False)

        def replay_isolated(opened: Any = opened) -> Any:
            return fluxrun.replay.run(opened, key, isolate=True)

        def replay_bytes(data: bytes = data) -> Any:
            return fluxrun.replay.run(data, key)

        result = replay()
        if result.outcome != "reproduced" or result.recorded_calls != calls or sum(result.served.values()) != calls:
            raise AssertionError(f"N={calls}: replay {result.outcome}, served {dict(result.served)}")
        if result.unconsumed:
            raise AssertionError(f"N={calls}: {len(result.unconsumed)} recorded calls were not made at replay")

        direct_ns = time_runs(direct, side_runs)
        replay_ns = time_runs(replay, runs)
        isolated = replay_isolated()
        if isolated.outcome != "reproduced" or "namespace" not in isolated.isolation:
            raise AssertionError(f"N={calls}: isolated replay {isolated.outcome}, isolation {isolated.isolation}")
        isolated_ns = time_runs(replay_isolated, side_runs)
        bytes_ns = time_runs(replay_bytes, side_runs)
        install.acquire(app_in_app())
        try:
            held_ns = time_runs(replay, side_runs)
        finally:
            install.release()
        app.FIXED = True
        try:
            if replay().outcome != "fixed":
                raise AssertionError(f"N={calls}: the fixed module does not replay as fixed")
            fixed_ns = time_runs(replay, side_runs)
        finally:
            app.FIXED = False
        replay_stats = stats_ms(replay_ns)
        target = TARGET_BASE_MS + TARGET_PER_CALL_MS * calls
        rows.append(
            {
                "calls": calls,
                "mix": mix_label(calls),
                "http_gets": gets,
                "served": dict(result.served),
                "direct_ms": stats_ms(direct_ns)["median_ms"],
                "replay": replay_stats,
                "per_call_ms": replay_stats["median_ms"] / calls,
                "fixed_ms": stats_ms(fixed_ns)["median_ms"],
                "isolated": stats_ms(isolated_ns),
                "held_ms": stats_ms(held_ns)["median_ms"],
                "bytes_ms": stats_ms(bytes_ns)["median_ms"],
                "bundle_bytes": len(data),
                "target_ms": target,
                "pass": replay_stats["median_ms"] < target,
            }
        )
    return rows, opened_by_calls


def app_in_app() -> Any:
    from fluxrun._internal import InApp

    return InApp()


def profile_replay(opened: Any, replay_key: Path, top: int = 20) -> str:
    """cProfile of 20 replays of one bundle; the top entries by own time and by cumulative time."""
    key = load_replay_key(replay_key)
    fluxrun.replay.run(opened, key)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(20):
        fluxrun.replay.run(opened, key)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


# ------------------------------------------------------------------------------------------------------
# Section 2: VCR.py playback of the same exchanges
# ------------------------------------------------------------------------------------------------------


class InventoryHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, **VCR_BODY}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class LocalServer:
    """A threaded stdlib HTTP server on 127.0.0.1, on a free port, counting the requests it answers."""

    def __init__(self) -> None:
        self.requests = 0
        outer = self

        class Counting(InventoryHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                super().do_GET()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Counting)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="replay-bench-http", daemon=True)
        self.running = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> None:
        self.thread.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.server.shutdown()
            self.thread.join(5)
            self.running = False
        self.server.server_close()


def vcr_urls(base: str, gets: int) -> list[str]:
    return [f"{base}/orders/7/items/{item}" for item in range(gets)]


def measure_vcr(settings: Settings, workdir: Path) -> list[dict[str, Any]]:
    cassettes = workdir / "cassettes"
    server = LocalServer()
    server.start()
    client = httpx.Client()
    plan: list[tuple[int, Path, list[str]]] = []
    try:
        recorder = vcr.VCR(record_mode="once")
        for calls in RECORDED_CALLS:
            gets, _ = mix(calls)
            path = cassettes / f"inventory-{gets}.yaml"
            urls = vcr_urls(server.base_url, gets)
            with recorder.use_cassette(str(path)) as cassette:
                for url in urls:
                    client.get(url).raise_for_status()
            if len(cassette) != gets or not path.exists():
                raise AssertionError(f"vcrpy recorded {len(cassette)} of {gets} requests")
            plan.append((calls, path, urls))
        live_before = server.requests
    finally:
        server.stop()  # playback below cannot reach it: anything not played back fails the request
    rows = []
    player = vcr.VCR(record_mode="none")
    try:
        for (calls, path, urls), runs in zip(plan, settings.vcr_playbacks, strict=True):
            play_ns: list[int] = []
            whole_ns: list[int] = []

            def playback(
                urls: list[str] = urls, path: Path = path, play_ns: list[int] = play_ns, whole_ns: list[int] = whole_ns
            ) -> None:
                t0 = now_ns()
                with player.use_cassette(str(path)) as cassette:
                    t1 = now_ns()
                    for url in urls:
                        client.get(url)
                    t2 = now_ns()
                t3 = now_ns()
                if cassette.play_count != len(urls) or not cassette.all_played:
                    raise AssertionError(f"vcrpy played {cassette.play_count} of {len(urls)} recorded requests")
                play_ns.append(t2 - t1)
                whole_ns.append(t3 - t0)

            for _ in range(3):
                playback()
            play_ns.clear()
            whole_ns.clear()
            time_runs(playback, runs, warmup=0)
            rows.append(
                {
                    "calls": calls,
                    "http_gets": len(urls),
                    "play": stats_ms(play_ns),
                    "load_play": stats_ms(whole_ns),
                    "cassette_bytes": path.stat().st_size,
                }
            )
    finally:
        client.close()
    if server.requests != live_before:
        raise AssertionError("the local server answered requests during playback")
    return rows


# ------------------------------------------------------------------------------------------------------
# Section 3: one pytest run replaying a folder of bundles
# ------------------------------------------------------------------------------------------------------


def pytest_env(replay_key: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "FLUXRUN_"))}
    env["FLUXRUN_REPLAY_KEY"] = str(replay_key)
    return env


def run_pytest(project: Path, folder: str, workers: int, env: dict[str, str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if workers:
        command += ["-n", str(workers)]
    command += ["--fluxrun-bundles", folder, folder]
    started = now_ns()
    done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    wall = (now_ns() - started) / 1e9
    tail = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    passed = re.search(r"(\d+) passed", tail)
    failed = re.search(r"(\d+) (?:failed|errors?)", tail)
    reported = re.search(r" in ([\d.]+)s", tail)
    return {
        "wall_s": wall,
        "returncode": done.returncode,
        "passed": int(passed.group(1)) if passed else 0,
        "failed": int(failed.group(1)) if failed else 0,
        "pytest_s": float(reported.group(1)) if reported else math.nan,
        "tail": tail,
        "stdout": done.stdout,
        "stderr": done.stderr,
    }


def measure_pytest(settings: Settings, project: Path, replay_key: Path, console: Console) -> list[dict[str, Any]]:
    env = pytest_env(replay_key)
    (project / "empty").mkdir(exist_ok=True)
    # (name, xdist workers, FLUXRUN_REPLAY_ISOLATE): guards replay isolated by default; "0" is the in-process path
    configs = [("serial, isolated", 0, "1"), ("serial, in-process", 0, "0"), ("-n 2 (xdist), isolated", 2, "1")]
    samples: dict[str, dict[str, list[dict[str, Any]]]] = {name: {"empty": [], "bundles": []} for name, *_ in configs}
    for round_index in range(settings.pytest_rounds):
        for name, workers, isolate in configs:
            for folder in ("empty", "bundles"):
                run = run_pytest(project, folder, workers, {**env, "FLUXRUN_REPLAY_ISOLATE": isolate})
                expected_rc = 5 if folder == "empty" else 0  # 5: no tests collected
                if run["returncode"] != expected_rc or (folder == "bundles" and run["passed"] != settings.bundles):
                    console.print(
                        f"[red]pytest {name} on {folder}: exit {run['returncode']}, {escape(run['tail'])}[/red]\n"
                        + escape("\n".join((run["stdout"] + run["stderr"]).splitlines()[-30:]))
                    )
                samples[name][folder].append(run)
                console.print(
                    f"  round {round_index + 1} {name:13} {folder:7}: {run['wall_s']:.2f} s wall  "
                    f"({escape(run['tail'] or 'no summary')})"
                )
    rows = []
    for name, workers, _ in configs:
        empty = statistics.median(r["wall_s"] for r in samples[name]["empty"])
        full = statistics.median(r["wall_s"] for r in samples[name]["bundles"])
        runs = samples[name]["bundles"]
        per_bundle_ms = (full - empty) / settings.bundles * 1000
        projected = empty + per_bundle_ms * PYTEST_TARGET_BUNDLES / 1000
        ok = all(r["returncode"] == 0 and r["passed"] == settings.bundles for r in runs)
        rows.append(
            {
                "config": name,
                "workers": workers,
                "bundles": settings.bundles,
                "empty_wall_s": empty,
                "wall_s": full,
                "pytest_reported_s": statistics.median(r["pytest_s"] for r in runs),
                "per_bundle_ms": per_bundle_ms,
                "per_bundle_total_ms": full / settings.bundles * 1000,
                "wall_1000_s": full if settings.bundles == PYTEST_TARGET_BUNDLES else projected,
                "projected": settings.bundles != PYTEST_TARGET_BUNDLES,
                "passed": [r["passed"] for r in runs],
                "all_passed": ok,
                "walls_s": [r["wall_s"] for r in runs],
                "empty_walls_s": [r["wall_s"] for r in samples[name]["empty"]],
                "pass": ok and (full if settings.bundles == PYTEST_TARGET_BUNDLES else projected) < PYTEST_TARGET_S,
            }
        )
    return rows


# ------------------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------------------


def replay_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(
        title="1. Replay time per bundle after start-up (fluxrun.replay.run on an opened bundle)",
        title_justify="left",
        caption="median/p95 of repeated replays in one process, the failure reproduced. direct = the function "
        "called without FluxRun against the live MockTransport; fixed = the module switched to FIXED (returns "
        "normally, as a passing guard does); held = interceptors kept installed around the loop (run() otherwise "
        "installs and restores every patch each call); +open = run(bundle bytes, key), decrypt included. "
        "replay = in this process (isolate=False); isolated = the default, in a forked child with its own "
        "network namespace, seccomp filter and audit hook (isolate=True)",
        caption_justify="left",
    )
    columns = (
        "recorded calls",
        "mix",
        "direct ms",
        "replay ms",
        "p95 ms",
        "ms/call",
        "x direct",
        "fixed ms",
        "held ms",
        "+open ms",
        "isolated ms",
        "isolated p95",
        "runs",
        "target",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("mix", "target") else "right")
    for row in rows:
        replay = row["replay"]
        table.add_row(
            str(row["calls"]),
            row["mix"],
            f"{row['direct_ms']:.3f}",
            f"{replay['median_ms']:.3f}",
            f"{replay['p95_ms']:.3f}",
            f"{row['per_call_ms']:.3f}",
            f"{replay['median_ms'] / row['direct_ms']:.1f}x",
            f"{row['fixed_ms']:.3f}",
            f"{row['held_ms']:.3f}",
            f"{row['bytes_ms']:.3f}",
            f"{row['isolated']['median_ms']:.3f}",
            f"{row['isolated']['p95_ms']:.3f}",
            str(replay["runs"]),
            f"< {row['target_ms']:.1f} ms {verdict(row['pass'])}",
        )
    return table


def vcr_table(rows: list[dict[str, Any]], replay_rows: list[dict[str, Any]]) -> Table:
    by_calls = {row["calls"]: row for row in replay_rows}
    table = Table(
        title="2. VCR.py playback of the same HTTP exchanges (record_mode='none', server stopped)",
        title_justify="left",
        caption="play = the GETs inside an already loaded cassette; load+play = the whole use_cassette block "
        "(YAML read and parsed on entry). FluxRun columns from table 1: replay = run(opened), +open = "
        "run(bytes). FluxRun's N also counts the env and time reads; VCR plays only the GETs. "
        f"Published: about {PUBLISHED_VCR_100_MS} ms for a 100-call VCR.py test (linear cassette search)",
        caption_justify="left",
    )
    columns = (
        "recorded calls",
        "GETs",
        "VCR play ms",
        "VCR p95",
        "VCR load+play ms",
        "cassette bytes",
        "FluxRun replay ms",
        "FluxRun +open ms",
        "replay / play",
        "+open / load+play",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        ours = by_calls[row["calls"]]
        table.add_row(
            str(row["calls"]),
            str(row["http_gets"]),
            f"{row['play']['median_ms']:.3f}",
            f"{row['play']['p95_ms']:.3f}",
            f"{row['load_play']['median_ms']:.3f}",
            f"{row['cassette_bytes']:,}",
            f"{ours['replay']['median_ms']:.3f}",
            f"{ours['bytes_ms']:.3f}",
            f"{ours['replay']['median_ms'] / row['play']['median_ms']:.2f}x",
            f"{ours['bytes_ms'] / row['load_play']['median_ms']:.2f}x",
        )
    return table


def pytest_table(rows: list[dict[str, Any]], settings: Settings) -> Table:
    table = Table(
        title=f"3. One pytest run replaying {settings.bundles:,} bundles as guards ({BUNDLE_CALLS} recorded calls "
        "each: env, time, 3 GETs)",
        title_justify="left",
        caption="`python -m pytest -q -p no:cacheprovider [-n 2] --fluxrun-bundles bundles bundles` in a project "
        "folder with the fixed module; wall time of the subprocess, median over "
        f"{settings.pytest_rounds} interleaved round(s). start-up = the same command on an empty folder; "
        "per bundle = (wall - start-up) / bundles"
        + ("; 1,000 projected = start-up + 1,000 x per bundle" if settings.bundles != PYTEST_TARGET_BUNDLES else ""),
        caption_justify="left",
    )
    columns = ("configuration", "bundles", "passed", "start-up s", "wall s", "pytest's own s", "per bundle ms",
               "wall/bundle ms", "1,000 bundles s", "target")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in ("configuration", "target") else "right")
    for row in rows:
        table.add_row(
            row["config"],
            f"{row['bundles']:,}",
            "/".join(str(p) for p in row["passed"]),
            f"{row['empty_wall_s']:.2f}",
            f"{row['wall_s']:.2f}",
            f"{row['pytest_reported_s']:.2f}",
            f"{row['per_bundle_ms']:.2f}",
            f"{row['per_bundle_total_ms']:.2f}",
            f"{row['wall_1000_s']:.2f}" + (" (projected)" if row["projected"] else ""),
            f"< {PYTEST_TARGET_S:.0f} s {verdict(row['pass'])}",
        )
    return table


def collect_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    targets = []
    for row in results["replay"]:
        targets.append(
            {
                "target": f"replay, {row['calls']} recorded call(s), median < {row['target_ms']:.1f} ms "
                f"({TARGET_BASE_MS:g} + {TARGET_PER_CALL_MS:g}/call)",
                "measured": row["replay"]["median_ms"],
                "unit": "ms",
                "pass": row["pass"],
            }
        )
    for row in results["pytest"]:
        projected = " (projected from the quick run)" if row["projected"] else ""
        targets.append(
            {
                "target": f"1,000 bundle replays in one pytest run, {row['config']}, "
                f"< {PYTEST_TARGET_S:g} s{projected}",
                "measured": row["wall_1000_s"],
                "unit": "s",
                "pass": row["pass"],
            }
        )
    return targets


# ------------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------------


def import_app(folder: Path) -> Any:
    sys.path.insert(0, str(folder))
    sys.modules.pop(APP_MODULE, None)
    return importlib.import_module(APP_MODULE)


def run_all(settings: Settings, workdir: Path, console: Console, profile: bool) -> dict[str, Any]:
    results: dict[str, Any] = {
        "mode": "quick" if settings is QUICK else "full",
        "python": platform.python_version(),
        "fluxrun": fluxrun.__version__,
        "vcrpy": vcr.__version__,
        "httpx": httpx.__version__,
        "cpus": os.cpu_count(),
    }
    capture_key, replay_key = generate_keys(workdir / "keys")
    app_folder = workdir / "app"
    write_app(app_folder, fixed=False)
    project = workdir / "project"
    write_app(project, fixed=True)
    (project / "pytest.ini").write_text("[pytest]\n")  # pins the rootdir to the project folder
    os.environ.setdefault("BENCH_REGION", "eu-west-1")
    app = import_app(app_folder)

    console.print("capturing one bundle per N, then the pytest folder ...")
    started = now_ns()
    single = {}
    for calls in RECORDED_CALLS:
        gets, reads = mix(calls)
        (path,) = capture_bundles(app, workdir / f"single-{calls}", capture_key, [(calls, gets, reads)])
        single[calls] = path
    bundle_gets, bundle_reads = mix(BUNDLE_CALLS)
    capture_bundles(
        app, project / "bundles", capture_key, [(order, bundle_gets, bundle_reads) for order in range(settings.bundles)]
    )
    results["capture_s"] = (now_ns() - started) / 1e9
    console.print(f"  {settings.bundles + len(RECORDED_CALLS):,} bundles captured in {results['capture_s']:.1f} s")

    console.print("[bold]1.[/bold] replay per bundle ...")
    results["replay"], opened = measure_replay(settings, app, single, replay_key)
    console.print(replay_table(results["replay"]))

    console.print("[bold]2.[/bold] VCR.py playback ...")
    results["vcr"] = measure_vcr(settings, workdir)
    console.print(vcr_table(results["vcr"], results["replay"]))

    console.print("[bold]3.[/bold] pytest --fluxrun-bundles, one subprocess per run ...")
    results["pytest"] = measure_pytest(settings, project, replay_key, console)
    console.print(pytest_table(results["pytest"], settings))

    if profile:
        console.print(f"[bold]profile[/bold]: 20 replays of the {RECORDED_CALLS[-1]}-call bundle")
        text = profile_replay(opened[RECORDED_CALLS[-1]], replay_key)
        console.print(escape(text), highlight=False)
        results["profile"] = text

    results["targets"] = collect_targets(results)
    console.print(targets_table(results["targets"], settings is QUICK))
    return results


def parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fast smoke run (few samples, 100 bundles)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top entries for a 100-call replay")
    return parser.parse_args(list(argv) if argv is not None else None)


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(
        f"FluxRun {fluxrun.__version__} replay benchmark ({'quick' if args.quick else 'full'}), "
        f"Python {platform.python_version()}, vcrpy {vcr.__version__}, httpx {httpx.__version__}, "
        f"{os.cpu_count()} CPUs"
    )
    logging.getLogger("fluxrun").addFilter(DropClientGapWarning())
    started = now_ns()
    workdir = Path(tempfile.mkdtemp(prefix="fluxrun-replay-bench-"))
    try:
        results = run_all(settings, workdir, console, args.profile)
    finally:
        fluxrun.shutdown()
        sys.modules.pop(APP_MODULE, None)
        shutil.rmtree(workdir, ignore_errors=True)
    results["elapsed_s"] = (now_ns() - started) / 1e9
    console.print(f"done in {results['elapsed_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
        console.print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
