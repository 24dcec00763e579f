"""The fidelity corpus's harness: real processes on loopback, a captured failure, an offline replay a day later.

A scenario starts a fake upstream (its own uvicorn process, answering the way the real service does) and the
app (its own uvicorn process, `fluxrun.init()` configured from FLUXRUN_DIR and FLUXRUN_CAPTURE_KEY), sends the
request that fails, waits for the bundle, and stops both. `replay_offline` then replays the bundle in a fresh
Python process whose environment lacks the app's settings and secrets, with the clock a day later, as a CI
checkout would run the guard.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from servers import uvicorn_process

FIDELITY = Path(__file__).parent
APPS = FIDELITY / "apps"  # the apps under test, one module each (`app` as it failed, `fixed_app` after the fix)
UPSTREAMS = FIDELITY / "upstreams"  # fake services, each in its own process
CAPTURE_SETTINGS = ("FLUXRUN_DIR", "FLUXRUN_CAPTURE_KEY", "FLUXRUN_DSN", "FLUXRUN_REPLAY_APP", "FLUXRUN_REPLAY_ISOLATE")


@contextmanager
def upstream(module_app: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """A fake upstream (`module:app` in upstreams/) in its own uvicorn process; yields its base URL."""
    with uvicorn_process(module_app, env, app_dir=UPSTREAMS) as url:
        yield url


@contextmanager
def app_server(module_app: str, keys: Any, capture_dir: Path, env: dict[str, str]) -> Iterator[str]:
    """The app (`module:app` in apps/) under uvicorn, capturing into `capture_dir`; yields its base URL."""
    settings = {"FLUXRUN_CAPTURE_KEY": str(keys.capture), "FLUXRUN_DIR": str(capture_dir), **env}
    with uvicorn_process(module_app, settings, app_dir=APPS) as url:
        yield url


def run_job(module_function: str, keys: Any, capture_dir: Path, env: dict[str, str], *args: str) -> str:
    """Run `module:function(*args)` from apps/ in a process of its own (a worker or cron job, not a server),
    capturing into `capture_dir`; returns what it printed. The job is expected to fail."""
    module, _, function = module_function.partition(":")
    settings = {**os.environ, "FLUXRUN_CAPTURE_KEY": str(keys.capture), "FLUXRUN_DIR": str(capture_dir), **env}
    code = f"import sys, {module}; {module}.{function}(*sys.argv[1:])"
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=settings, cwd=APPS, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0, f"the job did not fail:\n{proc.stdout}{proc.stderr}"
    return proc.stdout + proc.stderr


def hits(upstream_url: str) -> int:
    """How many API requests a fake upstream has answered (each serves GET /_hits)."""
    return int(httpx.get(f"{upstream_url}/_hits", timeout=5).json()["hits"])


def one_bundle(directory: Path, timeout: float = 20.0) -> Path:
    """The one bundle the app wrote for the failing request (sealed off the request path, so wait)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = sorted(directory.glob("*.fluxrun")) if directory.exists() else []
        if files:
            time.sleep(0.2)  # written whole (the sink renames into place); let a second one show up
            files = sorted(directory.glob("*.fluxrun"))
            assert len(files) == 1, f"expected one bundle, found {[f.name for f in files]}"
            return files[0]
        time.sleep(0.05)
    raise AssertionError(f"no bundle in {directory} within {timeout} s")


def assert_stopped(url: str) -> None:
    """Nothing answers at `url` any more: a replay cannot have reached it."""
    try:
        httpx.get(url + "/", timeout=1)
    except httpx.TransportError:
        return
    raise AssertionError(f"{url} still answers after it was stopped")


@dataclass
class Replays:
    """What `replay_offline` saw: one entry per replay, and the conditions they ran under."""

    runs: list[dict[str, Any]]
    env_present: list[str]  # names from env_without that the replay process still had (should be none)
    real_time: float
    replay_time: float  # time.time() inside the replay process once the clock travelled
    wall_seconds: float  # the whole replay process, interpreter start included
    output: str = field(repr=False, default="")

    def describe(self) -> str:
        parts = []
        for i, run in enumerate(self.runs, 1):
            parts.append(f"--- replay {i}: {run.get('outcome') or run.get('raised')} in {run['seconds']:.3f} s")
            for key in ("expectation_failed", "summary", "traceback"):
                if run.get(key):
                    parts.append(str(run[key]))
        if self.output.strip():
            parts.append(f"--- replay process output:\n{self.output[-4000:]}")
        return "\n".join(parts)

    def assert_offline_a_day_later(self, days: float = 1) -> None:
        assert self.env_present == [], f"the replay process still had {self.env_present}"
        assert self.replay_time - self.real_time > days * 86_400 - 60, "the clock did not travel"

    def assert_reproduced(self, times: int = 3, max_seconds: float = 1.0) -> None:
        """Each replay reproduced the captured failure (the same error type and fingerprint, or the same 5xx
        status), identically each time, and fast: no backoff was really waited."""
        self.assert_offline_a_day_later()
        assert len(self.runs) == times
        for run in self.runs:
            assert run.get("outcome") == "reproduced", self.describe()
            same = ("kind", "status", "error_type", "fingerprint")
            assert {k: run["new"][k] for k in same} == {k: run["original"][k] for k in same}, self.describe()
        # A sleep that really waited would slow every run; one busy moment on a shared machine slows only some.
        fastest = min(run["seconds"] for run in self.runs)
        assert fastest < max_seconds, f"the fastest of {times} replays took {fastest:.2f} s: something really waited"
        first = self.runs[0]["new"]
        assert all(run["new"] == first for run in self.runs), self.describe()

    def assert_every_recorded_call_made(self) -> None:
        """`expect="reproduce"` held strictly: no recorded call went unmade (what a guard requires)."""
        for run in self.runs:
            assert "expectation_failed" not in run and run.get("unconsumed") == 0, self.describe()

    def assert_fixed(self) -> dict[str, Any]:
        self.assert_offline_a_day_later()
        (run,) = self.runs
        assert run.get("outcome") == "fixed" and "expectation_failed" not in run, self.describe()
        return run


def replay_offline(
    bundle: Path,
    app_entry: str,
    keys: Any,
    *,
    env_without: Sequence[str] = (),
    days_later: float = 1,
    expect: str = "reproduce",
    times: int = 3,
    answers: list[list[Any]] | None = None,
    name_app: bool = True,
    timeout: float = 120,
) -> Replays:
    """Replay `bundle` against `app_entry` (`module:attr` in apps/) `times` times in a fresh Python process.

    That process's environment lacks `env_without` (the app's settings and secrets) and FluxRun's capture
    settings, and its clock is `days_later` days ahead (time-machine), so the replay sees what a CI sees.
    Replays use FluxRun's default isolation (a child without network). `answers` are `fluxrun.replay.Answers`
    calls as data: `[["http", ["GET", url], {"json": {...}}]]`. `name_app=False` neither imports `app_entry`'s
    module nor passes `app=`: replay must find the entry point the bundle recorded (each run reports `entry`).
    """
    removed = set(env_without) | set(CAPTURE_SETTINGS)
    env = {name: value for name, value in os.environ.items() if name not in removed}
    out = bundle.parent / f"replay-{time.monotonic_ns()}.json"
    job = {
        "bundle": str(bundle),
        "key": str(keys.replay),
        "app": app_entry,
        "app_dir": str(APPS),
        "expect": expect,
        "times": times,
        "answers": answers,
        "name_app": name_app,
        "env_without": sorted(removed),
        "days_later": days_later,
        "out": str(out),
    }
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(FIDELITY / "replay_child.py"), json.dumps(job)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=bundle.parent,
    )
    wall = time.monotonic() - started
    output = proc.stdout + proc.stderr
    if proc.returncode != 0 or not out.exists():
        raise AssertionError(f"the replay process failed (exit {proc.returncode}):\n{output}")
    found = json.loads(out.read_text())
    return Replays(found["runs"], found["env_present"], found["real_time"], found["replay_time"], wall, output)
