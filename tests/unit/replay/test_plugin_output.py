"""What pytest prints for a failing replay, through pytest itself: no capture warnings, and an IO timeline
that compares the same kinds of calls on both sides."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

# The app sets FluxRun up at import, from the environment; it logs between two env reads, then fails.
SHOP = """
import logging
import os

import fluxrun

fluxrun.init()
log = logging.getLogger("shop")


@fluxrun.capture
def checkout(sku):
    region = os.environ.get("SHOP_REGION", "eu")
    log.warning("checking out %s in %s", sku, region)
    total = int(os.environ.get("SHOP_TOTAL", "7"))
    return total / 0
"""

GUARD = """
import fluxrun


@fluxrun.replay("bundles/checkout.fluxrun")
def test_checkout_stays_fixed():
    pass
"""


@pytest.fixture
def project(pytester: pytest.Pytester, keys, monkeypatch) -> Path:
    """shop.py and one captured failure in bundles/ (captured in its own process); the replay key is set, the
    capture key is not, as on a developer's machine or in CI."""
    folder = pytester.path
    (folder / "shop.py").write_text(textwrap.dedent(SHOP))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXRUN_")}
    env.update(FLUXRUN_CAPTURE_KEY=str(keys.capture), FLUXRUN_DIR=str(folder / "bundles"), PYTHONPATH=str(folder))
    capture = "import shop, fluxrun\ntry:\n    shop.checkout('sku-1')\nexcept ZeroDivisionError:\n    pass\n"
    subprocess.run([sys.executable, "-c", capture + "fluxrun.shutdown()\n"], cwd=folder, env=env, check=True)
    (bundle,) = (folder / "bundles").glob("*.fluxrun")
    bundle.rename(folder / "bundles" / "checkout.fluxrun")
    for name in list(os.environ):
        if name.startswith("FLUXRUN_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("FLUXRUN_REPLAY_KEY", str(keys.replay))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    pytester.syspathinsert()
    pytester.makepyfile(test_guard=GUARD)
    return folder


def failing_replay(pytester: pytest.Pytester) -> str:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*expected the failure to be fixed, but it is reproduced*", "*IO timeline:*"])
    return str(result.stdout)


def test_a_failing_replay_shows_no_capture_warning(pytester, project):
    output = failing_replay(pytester)
    assert "capture key" not in output
    assert "checking out sku-1 in eu" in output  # the app's own log line is still shown


def test_the_timeline_marks_no_difference_when_replay_made_the_recorded_calls(pytester, project):
    output = failing_replay(pytester)
    timeline = output.split("IO timeline:", 1)[1].split("\n-", 1)[0].splitlines()
    rows = [row for row in timeline if "|" in row and "recorded" not in row]
    assert [row.split("|")[0].split() for row in rows] == [["env", "env", "SHOP_REGION"], ["env", "env", "SHOP_TOTAL"]]
    assert not any(row.lstrip().startswith("->") for row in rows), "\n".join(timeline)


def test_the_timeline_marks_the_first_call_that_differs(pytester, project):
    shop = project / "shop.py"
    shop.write_text(shop.read_text().replace('"SHOP_TOTAL", "7"', '"SHOP_REGION", "7"') + "  # changed\n")
    output = pytester.runpytest_subprocess("-p", "no:cacheprovider").stdout.str()
    # Where CI is set, pytest repeats the whole message in the short summary: read the failure section only.
    failure = output.split("short test summary info", 1)[0]
    marked = [row for row in failure.splitlines() if row.lstrip().startswith("->")]
    assert len(marked) == 1 and "env SHOP_TOTAL" in marked[0], output
