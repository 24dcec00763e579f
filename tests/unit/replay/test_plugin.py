"""The pytest plugin, through pytest itself: @fluxrun.replay, --fluxrun-bundles, keys, repeat, xdist."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

SHOP = """
import os
import fluxrun

FIXED = {fixed}


@fluxrun.boundary("inventory.reserve")
def reserve(sku):
    raise RuntimeError("the real inventory must never be called at replay")


@fluxrun.capture
def checkout(sku):
    region = os.environ.get("SHOP_REGION", "eu")
    if FIXED:
        return {{"sku": sku, "region": region}}
    stock = reserve(sku)
    return stock["count"] / 0{padding}
"""


def write_shop(folder: Path, *, fixed: bool) -> None:
    # the padding changes the file size, so a stale bytecode cache can never be used for the new source
    (folder / "shop.py").write_text(textwrap.dedent(SHOP.format(fixed=fixed, padding="  # fixed" if fixed else "")))


@pytest.fixture
def project(pytester: pytest.Pytester, keys) -> Path:
    """A project with shop.py and one captured failure in bundles/, captured in a separate process."""
    folder = pytester.path
    write_shop(folder, fixed=False)
    capture = textwrap.dedent(
        f"""
        import fluxrun, shop
        fluxrun.init(directory="bundles", capture_key={str(keys.capture)!r})
        # production's inventory answers; at replay shop.reserve's body (which raises) must not run
        shop.reserve = fluxrun.boundary("inventory.reserve")(lambda sku: {{"count": 3}})
        try:
            shop.checkout("sku-1")
        except ZeroDivisionError:
            pass
        fluxrun.shutdown()
        """
    )
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    subprocess.run([sys.executable, "-c", capture], cwd=folder, check=True, env=env)
    (bundle,) = (folder / "bundles").glob("*.fluxrun")
    bundle.rename(folder / "bundles" / "checkout.fluxrun")
    pytester.syspathinsert()
    return folder


@pytest.fixture
def replay_key(keys, monkeypatch):
    monkeypatch.setenv("FLUXRUN_REPLAY_KEY", str(keys.replay))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")


def test_expect_reproduce_passes_while_the_bug_is_there(pytester, project, replay_key):
    pytester.makepyfile(
        test_bug="""
        import fluxrun

        @fluxrun.replay("bundles/checkout.fluxrun", expect="reproduce")
        def test_checkout_bug(fluxrun_replay):
            assert fluxrun_replay.outcome == "reproduced"
            assert fluxrun_replay.new.error_type == "builtins:ZeroDivisionError"
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_a_failed_replay_that_a_test_takes_as_a_fixture_is_a_failed_test_and_its_body_does_not_run(
    pytester, project, replay_key
):
    pytester.makepyfile(
        test_guard="""
        import fluxrun

        @fluxrun.replay("bundles/checkout.fluxrun")
        def test_checkout_stays_fixed(fluxrun_replay):
            raise AssertionError("the body ran although the replay had failed")

        @fluxrun.replay("bundles/missing.fluxrun")
        def test_missing_bundle(fluxrun_replay):
            raise AssertionError("the body ran although the bundle is missing")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2, errors=0)
    result.stdout.fnmatch_lines(["*expected the failure to be fixed, but it is reproduced*", "*cannot read bundle*"])
    result.stdout.no_fnmatch_line("*the body ran*")


def test_the_default_expectation_fails_readably_until_the_fix(pytester, project, replay_key):
    pytester.makepyfile(
        test_guard="""
        import fluxrun

        @fluxrun.replay("bundles/checkout.fluxrun")
        def test_checkout_stays_fixed():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*FluxRun replay of *checkout.fluxrun*",
            "*expected the failure to be fixed, but it is reproduced*",
            "*recorded: builtins:ZeroDivisionError: division by zero*",
            "*now:      builtins:ZeroDivisionError: division by zero*",
            "*IO timeline:*",
            "*env    env SHOP_REGION*",
        ]
    )
    assert "Traceback" not in result.stdout.str()
    write_shop(project, fixed=True)
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_bundles_folder_becomes_guards_without_test_code(pytester, project, replay_key):
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--fluxrun-bundles", "bundles", "-v")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*replay?shop:checkout ZeroDivisionError * FAILED*"])
    write_shop(project, fixed=True)
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "--fluxrun-bundles", "bundles").assert_outcomes(passed=1)


def test_guards_replay_isolated_one_option_away_and_the_report_says_so(pytester, project, replay_key, monkeypatch):
    monkeypatch.delenv("FLUXRUN_REPLAY_ISOLATE", raising=False)
    write_shop(project, fixed=True)
    default = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--fluxrun-bundles", "bundles")
    default.assert_outcomes(passed=1)
    default.stdout.fnmatch_lines(["FluxRun isolation: off (1 replay(s)); --fluxrun-isolate *"])
    isolated = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--fluxrun-bundles", "bundles", "--fluxrun-isolate"
    )
    isolated.assert_outcomes(passed=1)
    isolated.stdout.fnmatch_lines(["FluxRun isolation: network namespace + seccomp (1 replay(s))"])
    pytester.makeini("[pytest]\nfluxrun_isolate = true\n")
    from_ini = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--fluxrun-bundles", "bundles")
    from_ini.stdout.fnmatch_lines(["FluxRun isolation: network namespace + seccomp (1 replay(s))"])


def test_bundles_folder_from_the_ini_file_and_under_xdist(pytester, project, replay_key):
    write_shop(project, fixed=True)
    pytester.makeini("[pytest]\nfluxrun_bundles = bundles\n")
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2").assert_outcomes(passed=1)


def test_a_missing_key_fails_and_says_what_to_set(pytester, project, monkeypatch):
    monkeypatch.delenv("FLUXRUN_REPLAY_KEY", raising=False)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--fluxrun-bundles", "bundles")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*set FLUXRUN_REPLAY_KEY=path/to/replay.key*"])


def test_an_unreadable_bundle_fails_with_the_reason(pytester, project, replay_key):
    bundle = project / "bundles" / "checkout.fluxrun"
    bundle.write_bytes(bundle.read_bytes()[:100])
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--fluxrun-bundles", "bundles")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*cannot open bundle*truncated*"])


def test_repeat_replays_each_bundle_and_passes_when_deterministic(pytester, project, replay_key):
    pytester.makepyfile(
        test_repeat="""
        import fluxrun

        @fluxrun.replay("bundles/checkout.fluxrun", expect="reproduce")
        def test_again():
            pass
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "--fluxrun-repeat", "3").assert_outcomes(passed=1)


def test_the_key_can_come_from_the_ini_file(pytester, project, keys, monkeypatch):
    monkeypatch.delenv("FLUXRUN_REPLAY_KEY", raising=False)
    pytester.makeini(f"[pytest]\nfluxrun_replay_key = {keys.replay}\n")
    write_shop(project, fixed=True)
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "--fluxrun-bundles", "bundles").assert_outcomes(passed=1)


def test_a_divergence_renders_the_recorded_and_actual_timeline(pytester, project, replay_key):
    (project / "shop.py").write_text(
        (project / "shop.py")
        .read_text()
        .replace('os.environ.get("SHOP_REGION", "eu")', 'os.environ.get("SHOP_ZONE", "eu")')
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--fluxrun-bundles", "bundles")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*the code made a call the recording cannot answer (ReplayDivergence)*",
            "*env SHOP_ZONE has no recorded answer*",
            "*made at *shop.py:* in checkout*",
            "*IO timeline:*",
            "*recorded*|*replay*",
        ]
    )
