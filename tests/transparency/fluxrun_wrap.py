"""A pytest plugin that runs every test function of a suite inside `fluxrun.capture`.

Used by `scripts/transparency.sh`: a real library's own test suite must give the same per-test results
with and without it, which shows capture changes nothing the code under test can observe (threads,
context variables, clocks, env, warnings). Load it with `-p fluxrun_wrap` (this folder on PYTHONPATH).

`fluxrun.init` writes to a temporary folder with a throwaway capture key; failing tests are sealed there
like any captured failure, passing ones are dropped.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import fluxrun
from fluxrun.bundle import generate_keys

_folder = Path(tempfile.mkdtemp(prefix="fluxrun-transparency-"))
atexit.register(shutil.rmtree, _folder, True)


def pytest_configure(config: pytest.Config) -> None:
    capture_key, _ = generate_keys(_folder / "keys")
    fluxrun.init(directory=_folder / "bundles", capture_key=capture_key)
    config.add_cleanup(fluxrun.shutdown)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Iterator[None]:
    """Swap the test function for its captured form just for the call (fixtures were resolved already)."""
    original = pyfuncitem.obj
    pyfuncitem.obj = fluxrun.capture(original)
    try:
        return (yield)
    finally:
        pyfuncitem.obj = original
