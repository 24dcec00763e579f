"""The FluxRun pytest plugin (registered through the `pytest11` entry point).

- `@fluxrun.replay("tests/fluxrun/x.fluxrun")` replays a bundle in the test; the test passes when
  the failure is fixed, or with `expect="reproduce"` when it still fails the same way. A test that
  takes `fluxrun_replay` gets the `ReplayResult` for its own assertions.
- `--fluxrun-bundles DIR` (ini `fluxrun_bundles`) collects every bundle in DIR as a guard.
- The replay key: the marker's `key=`, else `FLUXRUN_REPLAY_KEY`, else the ini `fluxrun_replay_key`.
  A missing key or an unreadable bundle fails the test saying what to set: never a silent skip.
- `--fluxrun-repeat N` replays each bundle N times and fails on any difference between runs.
- `--fluxrun-app MODULE:ATTR` (ini `fluxrun_app`, env `FLUXRUN_REPLAY_APP`): the entry point to replay
  against, or rules `GLOB = MODULE:ATTR` (one per ini line, or `--fluxrun-app` repeated) matched on each
  bundle's "METHOD route", route, path or recorded entry (see `_entries`). Without one, a bundle's recorded
  entry replays only if `@fluxrun.capture` or the middleware marked it.
- `--fluxrun-isolate` / `--no-fluxrun-isolate` (ini `fluxrun_isolate`, env `FLUXRUN_REPLAY_ISOLATE`): each
  replay runs in a child process without network. Off by default for guards: it costs a process start per replay,
  which adds up over a thousand guards (README.md, "Measured", Replay); the report line says which protection held and,
  when off, how to turn it on.
- `--fluxrun-lenient` (ini `fluxrun_lenient`): recorded calls never made warn instead of failing a
  reproduce expectation. Precedence is command line, then marker, then ini.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import pytest

from pytest_fluxrun._collect import bundle_items
from pytest_fluxrun._run import (
    INSTALLED_KEY,
    ISOLATION_KEY,
    OUTCOMES_KEY,
    REPORT_KEY,
    FluxRunReplayWarning,
    judge,
    replay_marked,
    resolve,
)

__all__ = ["FluxRunReplayWarning"]


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
    group.addoption(
        "--fluxrun-app",
        metavar="[GLOB=]MODULE:ATTR",
        action="append",
        default=None,
        help="replay against this entry point, not the one a bundle records (which must carry FluxRun's mark); "
        "repeat with 'GLOB = module:attr' to choose per bundle by route, 'METHOD route', path or recorded entry",
    )
    parser.addini(
        "fluxrun_app",
        "entry point (module:attr) to replay bundles against, or one 'GLOB = module:attr' rule per line (env wins)",
        type="linelist",
        default=[],
    )
    group.addoption(
        "--fluxrun-isolate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="replay each bundle in a child process without network (default: off, or FLUXRUN_REPLAY_ISOLATE; "
        "in the test process, Python's sockets, DNS and process starts are blocked)",
    )
    parser.addini("fluxrun_isolate", "replay in an isolated child process (default false)", type="bool", default=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "fluxrun_replay(bundle, expect='fixed', key=None, app=None, strict=True, answers=None): replay a FluxRun "
        "bundle (set by @fluxrun.replay)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    folder = config.getoption("fluxrun_bundles") or config.getini("fluxrun_bundles")
    if folder:
        items.extend(bundle_items(session, resolve(config, str(folder))))


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
    replays = len(config.stash.get(OUTCOMES_KEY, []))
    kinds = sorted(config.stash.get(ISOLATION_KEY, None) or ())
    if replays and kinds:
        line = f"FluxRun isolation: {' | '.join(kinds)} ({replays} replay(s))"
        if kinds == ["off"]:
            line += "; --fluxrun-isolate (ini fluxrun_isolate = true) replays each in a child process without network"
        terminalreporter.write_line(line)
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
    """The `ReplayResult` of the test's `@fluxrun.replay` bundle. The replay runs here; its verdict is given
    in the call phase, before the test body, so a failed replay is a failed test, not an error."""
    if request.node.get_closest_marker("fluxrun_replay") is None:
        pytest.fail("the fluxrun_replay fixture needs @fluxrun.replay('path/to/bundle.fluxrun') on the test")
    return replay_marked(request.node).result


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    if isinstance(item, pytest.Function) and item.get_closest_marker("fluxrun_replay") is not None:
        judge(item)
