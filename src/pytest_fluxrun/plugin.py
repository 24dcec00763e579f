"""The FluxRun pytest plugin (registered through the `pytest11` entry point).

- `@fluxrun.replay("tests/fluxrun/x.fluxrun")` replays a bundle in the test; the test passes when
  the failure is fixed, or with `expect="reproduce"` when it still fails the same way. A test that
  takes `fluxrun_replay` gets the `ReplayResult` for its own assertions.
- `--fluxrun-bundles DIR` (ini `fluxrun_bundles`) collects every bundle in DIR as a guard.
- The replay key: the marker's `key=`, else `FLUXRUN_REPLAY_KEY`, else the ini `fluxrun_replay_key`.
  A missing key or an unreadable bundle fails the test saying what to set: never a silent skip.
- `--fluxrun-repeat N` replays each bundle N times and fails on any difference between runs.
- `--fluxrun-lenient` (ini `fluxrun_lenient`): recorded calls never made warn instead of failing a
  reproduce expectation. Precedence is command line, then marker, then ini.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from fluxrun.errors import FluxRunError, LiveIOBlocked, ReplayDivergence
from pytest_fluxrun._collect import bundle_items
from pytest_fluxrun._report import render_failure

RESULT_KEY = pytest.StashKey[Any]()
OUTCOMES_KEY = pytest.StashKey[list[dict[str, Any]]]()
REPORT_KEY = pytest.StashKey[str]()
INSTALLED_KEY = pytest.StashKey[bool]()


class FluxRunReplayWarning(UserWarning):
    """A lenient replay let something pass that a strict one would fail."""


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fluxrun", "FluxRun replay")
    group.addoption("--fluxrun-bundles", metavar="DIR", default=None, help="replay every bundle in DIR as a test")
    group.addoption("--fluxrun-repeat", metavar="N", type=int, default=None, help="replay each bundle N times")
    group.addoption(
        "--fluxrun-lenient",
        action="store_true",
        default=None,
        help="recorded calls never made at replay warn instead of failing expect='reproduce'",
    )
    parser.addini("fluxrun_bundles", "folder of bundles to replay as tests", default="")
    parser.addini("fluxrun_replay_key", "path to replay.key (FLUXRUN_REPLAY_KEY wins)", default="")
    parser.addini("fluxrun_lenient", "lenient replays by default", type="bool", default=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "fluxrun_replay(bundle, expect='fixed', key=None, app=None, strict=True): replay a FluxRun bundle "
        "(set by @fluxrun.replay)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if not isinstance(item, pytest.Function) or item.get_closest_marker("fluxrun_replay") is None:
            continue
        if "fluxrun_replay" not in item.fixturenames:
            item.fixturenames.append("fluxrun_replay")
    folder = config.getoption("fluxrun_bundles") or config.getini("fluxrun_bundles")
    if folder:
        items.extend(bundle_items(session, _resolve(config, str(folder))))


def _resolve(config: pytest.Config, path: str, near: Path | None = None) -> Path:
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


def run_marked(item: pytest.Item, marker: pytest.Mark | None) -> Any:
    """Run the replay a marker asks for; turn every failure into a readable pytest failure."""
    from fluxrun.bundle import load_replay_keys, open_bundle
    from fluxrun.replay import ReplayExpectationError, check, run

    assert marker is not None
    bundle_arg = marker.args[0] if marker.args else marker.kwargs.get("bundle")
    expect = marker.kwargs.get("expect", "fixed")
    config = item.config
    near = Path(str(item.path)).parent if getattr(item, "path", None) else None
    bundle = _resolve(config, str(bundle_arg), near)
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
        for _ in range(max(1, repeat)):
            result = run(opened, app=marker.kwargs.get("app"))
            results.append(result)
        check(results[0], expect, strict=strict)
    except (ReplayExpectationError, ReplayDivergence, LiveIOBlocked) as exc:
        problem = render_failure(exc, str(bundle), recorded)
        outcome = exc.result.outcome if isinstance(exc, ReplayExpectationError) else "changed"
        _remember(config, opened.sealed.bundle_id, outcome, item.nodeid)
    except FluxRunError as exc:
        problem = f"FluxRun replay of {bundle}: {exc}"
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
    _remember(config, opened.sealed.bundle_id, results[0].outcome, item.nodeid)
    for message in results[0].warnings:
        warnings.warn(FluxRunReplayWarning(f"{bundle}: {message}"), stacklevel=1)
    item.stash[RESULT_KEY] = results[0]
    return results[0]


def _remember(config: pytest.Config, bundle_id: str, outcome: str, nodeid: str) -> None:
    config.stash.setdefault(OUTCOMES_KEY, []).append({"bundle_id": bundle_id, "outcome": outcome, "test": nodeid})


def pytest_sessionfinish(session: pytest.Session) -> None:
    """With FLUXRUN_DSN set, report each replay's outcome to the server, so issues show guarded or regressed."""
    outcomes = session.config.stash.get(OUTCOMES_KEY, [])
    dsn = os.environ.get("FLUXRUN_DSN")
    if not outcomes or not dsn:
        return
    from pytest_fluxrun._ci import report_outcomes

    session.config.stash[REPORT_KEY] = report_outcomes(dsn, outcomes)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """The report's one line, after the results (the terminal reporter calls this after sessionfinish)."""
    message = config.stash.get(REPORT_KEY, "")
    if message:
        terminalreporter.write_line(message)


def pytest_unconfigure(config: pytest.Config) -> None:
    if config.stash.get(INSTALLED_KEY, False):
        from fluxrun.interceptors import install

        install.release()
        config.stash[INSTALLED_KEY] = False


@pytest.fixture
def fluxrun_replay(request: pytest.FixtureRequest) -> Any:
    """The `ReplayResult` of the test's `@fluxrun.replay` bundle (run in the call phase, so a failed
    replay is a failed test, not an error)."""
    if request.node.get_closest_marker("fluxrun_replay") is None:
        pytest.fail("the fluxrun_replay fixture needs @fluxrun.replay('path/to/bundle.fluxrun') on the test")
    return _Pending()


class _Pending:
    """Placeholder until the replay runs at the start of the call phase."""


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, Any, Any]:
    marker = pyfuncitem.get_closest_marker("fluxrun_replay")
    if marker is not None:
        result = run_marked(pyfuncitem, marker)
        if "fluxrun_replay" in pyfuncitem.funcargs:
            pyfuncitem.funcargs["fluxrun_replay"] = result
    return (yield)
