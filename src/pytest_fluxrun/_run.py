"""Running the replay a `fluxrun_replay` marker asks for, and its verdict, for the plugin and bundle items.

The replay itself may run while a test's fixtures are set up (a test that takes `fluxrun_replay` gets its
result); the verdict (fixed, reproduced, diverged) is given in the call phase, so a failed replay is a failed
test, not an error.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fluxrun.errors import FluxRunError, LiveIOBlocked, ReplayDivergence
from pytest_fluxrun._entries import entry_for, rules
from pytest_fluxrun._report import render_failure

__all__ = [
    "INSTALLED_KEY",
    "ISOLATION_KEY",
    "OUTCOMES_KEY",
    "REPORT_KEY",
    "FluxRunReplayWarning",
    "Replayed",
    "judge",
    "replay_marked",
    "resolve",
]

REPLAYED_KEY = pytest.StashKey["Replayed"]()
OUTCOMES_KEY = pytest.StashKey[list[dict[str, Any]]]()
REPORT_KEY = pytest.StashKey[str]()
INSTALLED_KEY = pytest.StashKey[bool]()
ISOLATION_KEY = pytest.StashKey[set[str]]()


class FluxRunReplayWarning(UserWarning):
    """A lenient replay let something pass that a strict one would fail."""


@dataclass
class Replayed:
    """What one marked replay gave: its first result (None when it could not run) and the failure to report."""

    result: Any = None
    problem: str | None = None
    warnings: list[str] = field(default_factory=list)


def resolve(config: pytest.Config, path: str, near: Path | None = None) -> Path:
    candidate = Path(path)
    if candidate.is_absolute():
        return candidate
    for base in (Path.cwd(), config.rootpath, near):
        if base is not None and (base / candidate).exists():
            return base / candidate
    return config.rootpath / candidate


def _key(config: pytest.Config, marker_key: str | None) -> str:
    key = marker_key or os.environ.get("FLUXRUN_REPLAY_KEY") or config.getini("fluxrun_replay_key")
    if not key:
        pytest.fail(
            "FluxRun needs the replay key to open bundles: set FLUXRUN_REPLAY_KEY=path/to/replay.key "
            "(or the ini option fluxrun_replay_key, or key= on @fluxrun.replay). It is the replay.key "
            "that `fluxrun keys generate` wrote.",
            pytrace=False,
        )
    return str(key)


def _lenient(config: pytest.Config, marker_strict: bool | None) -> bool:
    cli = config.getoption("fluxrun_lenient")
    if cli is not None:
        return bool(cli)
    if marker_strict is not None:
        return not marker_strict
    return bool(config.getini("fluxrun_lenient"))


def replay_marked(item: pytest.Item) -> Replayed:
    """Run the replay the item's marker asks for, once per item; every failure becomes a readable message."""
    done = item.stash.get(REPLAYED_KEY, None)
    if done is None:
        try:
            done = _replay(item, item.get_closest_marker("fluxrun_replay"))
        except pytest.fail.Exception as exc:
            done = Replayed(problem=str(exc.msg))
        item.stash[REPLAYED_KEY] = done
    return done


def judge(item: pytest.Item) -> Any:
    """The verdict of the item's replay (run now if no fixture ran it): fail the test, or return the result."""
    done = replay_marked(item)
    if done.problem is not None:
        pytest.fail(done.problem, pytrace=False)
    for message in done.warnings:
        warnings.warn(FluxRunReplayWarning(message), stacklevel=1)
    return done.result


def _replay(item: pytest.Item, marker: pytest.Mark | None) -> Replayed:
    from fluxrun._replay_mode import replaying
    from fluxrun.bundle import load_replay_keys, open_bundle
    from fluxrun.replay import ReplayExpectationError, check, run
    from fluxrun.replay.entry import choose_entry

    assert marker is not None
    bundle_arg = marker.args[0] if marker.args else marker.kwargs.get("bundle")
    expect = marker.kwargs.get("expect", "fixed")
    config = item.config
    near = Path(str(item.path)).parent if getattr(item, "path", None) else None
    bundle = resolve(config, str(bundle_arg), near)
    key_path = _key(config, marker.kwargs.get("key"))
    strict = not _lenient(config, marker.kwargs.get("strict"))
    problem = None
    try:
        opened = open_bundle(bundle.read_bytes(), load_replay_keys([Path(p) for p in key_path.split(os.pathsep) if p]))
    except OSError as exc:
        problem = f"FluxRun cannot read bundle {bundle}: {exc.strerror or exc}"
    except FluxRunError as exc:
        problem = f"FluxRun cannot open bundle {bundle}: {exc}"
    if problem is not None:
        pytest.fail(problem, pytrace=False)
    if not config.stash.get(INSTALLED_KEY, False):
        # Keep the interceptors installed for the rest of the session: installing and restoring every
        # patch around each replay would cost more than the replay itself (they are inert when idle).
        from fluxrun.interceptors import install
        from fluxrun.replay.runner import REPLAY_IN_APP

        install.acquire(REPLAY_IN_APP)
        config.stash[INSTALLED_KEY] = True
    recorded = opened.payload["events"]
    repeat = config.getoption("fluxrun_repeat") or 1
    results = []
    try:
        # The entry point is resolved (its module imported) here, in the test process, as a test importing the
        # app would: a replay's child process then starts with it loaded instead of importing it every time.
        # The app's own fluxrun.init() runs then: replaying() keeps its capture warnings out of the report.
        with replaying():
            app, _ = choose_entry(_app(config, marker.kwargs.get("app"), opened.payload), opened.payload)
            for _ in range(max(1, repeat)):
                result = run(opened, app=app, isolate=_isolate(config), answers=marker.kwargs.get("answers"))
                results.append(result)
        check(results[0], expect, strict=strict)
    except (ReplayExpectationError, ReplayDivergence, LiveIOBlocked) as exc:
        problem = render_failure(exc, str(bundle), recorded)
        outcome = exc.result.outcome if isinstance(exc, ReplayExpectationError) else "changed"
        _remember(config, opened.sealed.bundle_id, outcome, item.nodeid)
    except FluxRunError as exc:
        problem = f"FluxRun replay of {bundle}: {exc}"
    unready = opened.sealed.summary.get("not_replay_ready") if isinstance(opened.sealed.summary, dict) else None
    if problem is not None and isinstance(unready, list) and unready:
        problem += "\nnote: its capture already said it is not replay-ready: " + "; ".join(map(str, unready[:5]))
    if problem is not None:  # failed outside the except block: no "during handling" chain in the report
        pytest.fail(problem, pytrace=False)
    for index, other in enumerate(results[1:], start=2):
        if other.events != results[0].events or other.new != results[0].new:
            from pytest_fluxrun._report import timeline

            pytest.fail(
                f"FluxRun replay of {bundle} is not deterministic: run {index} of {repeat} differed from run 1\n"
                f"  run 1: {results[0].new.describe()}\n  run {index}: {other.new.describe()}\n"
                + timeline([{"kind": k, "call": c, "task": t} for k, c, t, _ in results[0].events], other.events),
                pytrace=False,
            )
    _remember(config, opened.sealed.bundle_id, results[0].outcome, item.nodeid, results[0].isolation)
    return Replayed(results[0], warnings=[f"{bundle}: {message}" for message in results[0].warnings])


def _app(config: pytest.Config, marker_app: Any, payload: dict[str, Any]) -> Any:
    """The entry point the operator chose: the marker's app=, --fluxrun-app, FLUXRUN_REPLAY_APP, ini fluxrun_app
    (the first of these with a rule for this bundle). None replays the bundle's recorded entry, which replay
    calls only if FluxRun marked it."""
    if marker_app:
        return marker_app
    for source in (config.getoption("fluxrun_app"), os.environ.get("FLUXRUN_REPLAY_APP"), config.getini("fluxrun_app")):
        chosen = entry_for(rules(source), payload)
        if chosen:
            return chosen
    return None


def _isolate(config: pytest.Config) -> bool | None:
    """Command line, then FLUXRUN_REPLAY_ISOLATE (None: let `run` read it), then the ini (default off)."""
    option = config.getoption("fluxrun_isolate")
    if option is not None:
        return bool(option)
    if os.environ.get("FLUXRUN_REPLAY_ISOLATE"):
        return None
    return bool(config.getini("fluxrun_isolate"))


def _remember(config: pytest.Config, bundle_id: str, outcome: str, nodeid: str, isolation: str = "") -> None:
    config.stash.setdefault(OUTCOMES_KEY, []).append({"bundle_id": bundle_id, "outcome": outcome, "test": nodeid})
    if isolation:
        config.stash.setdefault(ISOLATION_KEY, set()).add(isolation.split(":")[0])
