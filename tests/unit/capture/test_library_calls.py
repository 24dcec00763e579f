"""Calls an installed package makes are told apart from the standard library's on every Python layout.

pyenv and the official Docker images put site-packages inside the standard library's folder; a plain
prefix test once sorted packages as "the standard library" there and as "the app" in a virtualenv, so
the same app recorded different events depending on how Python was installed. An installed package's env
and randomness reads are recorded (the tape decides what the app observes, see test_tape_decides.py).
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
from pathlib import Path

import pytest

import fluxrun
from fluxrun import _internal


def call_vendor_sdk(order_id: int) -> str:
    import vendorsdk  # type: ignore[import-not-found]

    key, nonce = vendorsdk.sign(order_id)
    raise RuntimeError(f"declined {order_id} {key} {nonce}")


@pytest.fixture
def vendor_package(tmp_path, monkeypatch):
    """A package `vendorsdk` installed in a site-packages folder: it reads env and makes a nonce."""
    site = tmp_path / "site-packages"
    (site / "vendorsdk").mkdir(parents=True)
    (site / "vendorsdk" / "__init__.py").write_text(
        textwrap.dedent(
            """
            import os, uuid

            def sign(order_id):
                usable = "VENDOR_KEY" in os.environ and "VENDOR_MISSING" not in os.environ
                return os.environ.get("VENDOR_KEY") if usable else None, uuid.uuid4().hex
            """
        )
    )
    root = str(Path(os.path.realpath(site))) + os.sep
    monkeypatch.setattr(_internal, "LIBRARY_ROOTS", (*_internal.LIBRARY_ROOTS, root))
    monkeypatch.setattr(_internal, "SITE_ROOTS", (*_internal.SITE_ROOTS, root))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("VENDOR_KEY", "k-live")
    importlib.invalidate_caches()
    yield
    sys.modules.pop("vendorsdk", None)


@pytest.mark.usefixtures("vendor_package")
def test_an_installed_package_s_env_and_random_calls_are_recorded_and_served(captured, keys, monkeypatch):
    with pytest.raises(RuntimeError, match="declined 7 k-live ") as raised:  # the package's reads still answer
        fluxrun.capture(call_vendor_sdk)(7)
    assert [(e["kind"], e["site"].split(":")[0]) for e in captured.events()] == [
        ("env", "vendorsdk"),  # "VENDOR_KEY" in os.environ (a snapshot: the .get after it adds nothing)
        ("env", "vendorsdk"),  # "VENDOR_MISSING" in os.environ
        ("random", "vendorsdk"),
    ]
    (path,) = captured.files()
    fluxrun.shutdown()
    monkeypatch.delenv("VENDOR_KEY")  # a CI without the package's secret
    result = fluxrun.replay.run(path, keys.replay)
    assert result.outcome == "reproduced" and result.new.message == str(raised.value)


@pytest.mark.usefixtures("vendor_package")
def test_a_package_declared_the_app_s_is_recorded_and_replayed_from_the_recording(capture_with, keys, monkeypatch):
    captured = capture_with(in_app_include=["vendorsdk"])
    with pytest.raises(RuntimeError) as raised:
        fluxrun.capture(call_vendor_sdk)(7)
    payload = captured.one()
    assert [(e["kind"], e["site"].split(":")[0]) for e in payload["events"]] == [
        ("env", "vendorsdk"),  # "VENDOR_KEY" in os.environ
        ("env", "vendorsdk"),  # "VENDOR_MISSING" in os.environ
        ("random", "vendorsdk"),
    ]
    assert payload["in_app_include"] == ["vendorsdk"]
    (path,) = captured.files()
    fluxrun.shutdown()

    monkeypatch.setenv("VENDOR_KEY", "k-rotated")  # replay answers what the package read then
    result = fluxrun.replay.run(path, keys.replay)
    assert result.outcome == "reproduced"
    assert result.new.message == str(raised.value)
    assert result.served == {"env": 2, "random": 1}  # recorded calls served (VENDOR_KEY was read twice)
    assert _internal.app_modules() == ()  # the bundle's list applied only while it replayed


def test_packages_inside_the_standard_library_folder_are_told_apart(tmp_path, monkeypatch):
    stdlib = str(tmp_path / "lib" / "python3.11") + os.sep
    site = stdlib + "site-packages" + os.sep
    monkeypatch.setattr(_internal, "STDLIB_ROOTS", (stdlib,))
    monkeypatch.setattr(_internal, "SITE_ROOTS", (site,))
    monkeypatch.setattr(_internal, "LIBRARY_ROOTS", (stdlib, site))
    assert _internal.is_stdlib_file(stdlib + "json/decoder.py")
    assert not _internal.is_stdlib_file(site + "anyio/_core.py")
    assert _internal.is_library_file(site + "anyio/_core.py")
    assert not _internal.is_library_file(str(tmp_path / "app" / "shop.py"))
