"""A bundle is data, never code: whoever holds a capture key can seal any payload, and opening, inspecting or
replaying it must never call what it names (issue 13, "Bundles are data").

Each attack seals a hostile payload with a real capture key and checks that nothing it named ran: every gadget
leaves a trace in a file when any of its code runs (`hostile_targets.ran`, or `touch` through `os.system`)."""

from __future__ import annotations

import dataclasses
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import hostile_targets
import pytest
from typer.testing import CliRunner

import fluxrun
from fluxrun.bundle import Sealer, load_capture_key, read_bundle
from fluxrun.cli import app
from fluxrun.errors import FluxRunError
from fluxrun.model.values import UnreplayableValue, decode, encode

pytest_plugins = ["pytester"]

runner = CliRunner()


@fluxrun.capture
def victim(value: Any) -> None:
    """A legitimate captured entry point: the hostile bundles are made from its recording."""
    raise ValueError("the recorded failure")


@pytest.fixture(autouse=True)
def in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # Decoding and entry selection must be safe on their own, whatever process isolation adds around them.
    monkeypatch.setenv("FLUXRUN_REPLAY_ISOLATE", "0")
    monkeypatch.delenv("FLUXRUN_REPLAY_APP", raising=False)


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[Path]:
    """The file any gadget that runs writes to; it must never exist."""
    path = tmp_path / "pwned"
    hostile_targets.TRAIL = path
    yield path
    hostile_targets.TRAIL = None


@pytest.fixture
def recorded(captured) -> tuple[dict[str, Any], dict[str, Any]]:
    """A real recording of `victim` failing: its payload and summary, to be turned hostile."""
    with pytest.raises(ValueError):
        victim("harmless")
    (path,) = captured.files()
    fluxrun.shutdown()
    return captured.one(), read_bundle(path.read_bytes()).summary


@pytest.fixture
def hostile(recorded, keys, tmp_path: Path):
    """`hostile(entry=..., args=[...])`: the recording with those fields replaced, sealed with the capture key."""
    payload, summary = recorded

    def make(*, entry: str | None = None, args: list[Any] | None = None) -> Path:
        changed = {**payload, "request": {**payload["request"]}}
        if entry is not None:
            changed["entry"] = entry
        if args is not None:
            changed["request"]["args"] = args
        sealer = Sealer(load_capture_key(keys.capture), sdk="attacker")
        path = tmp_path / "hostile.fluxrun"
        path.write_bytes(sealer.seal(summary=summary, payload=changed, bundle_id=payload["bundle_id"]))
        return path

    return make


# -- entry points --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["os:system", "hostile_targets:gadget"])
def test_an_entry_point_the_bundle_chose_is_refused_by_replay_run(hostile, keys, trail, entry):
    path = hostile(entry=entry, args=[f"touch {trail}"])
    with pytest.raises(FluxRunError, match="FLUXRUN_REPLAY_APP") as refused:
        fluxrun.replay.run(path, keys.replay)
    assert entry in str(refused.value) and "app=" in str(refused.value)
    assert not trail.exists()


def test_an_os_system_entry_point_is_refused_by_the_replay_command(hostile, keys, trail):
    path = hostile(entry="os:system", args=[f"touch {trail}"])
    result = runner.invoke(app, ["replay", str(path), "--key", str(keys.replay)])
    assert result.exit_code == 1, result.output
    assert "os:system" in result.output and "--app" in result.output and "Traceback" not in result.output
    assert not trail.exists()


def test_the_operator_can_still_choose_the_entry_point(hostile, keys, trail, monkeypatch):
    path = hostile(entry="os:system", args=[f"touch {trail}"])
    result = fluxrun.replay.run(path, keys.replay, app=victim)
    assert result.outcome == "reproduced"
    monkeypatch.setenv("FLUXRUN_REPLAY_APP", f"{__name__}:victim")
    assert fluxrun.replay.run(path, keys.replay).outcome == "reproduced"
    cli = runner.invoke(app, ["replay", str(path), "--key", str(keys.replay), "--app", f"{__name__}:victim"])
    assert cli.exit_code == 0 and "REPRODUCED" in cli.output, cli.output
    assert not trail.exists()


def test_a_recorded_capture_entry_point_still_replays(recorded, keys, hostile):
    path = hostile()  # unchanged: the entry is `victim`, which @fluxrun.capture marked
    assert fluxrun.replay.run(path, keys.replay).outcome == "reproduced"


# -- values --------------------------------------------------------------------------------------------------

GADGETS = {
    "enum-os-system": {"$t": "enum", "type": "os:system", "v": "touch {trail}"},
    "enum-function": {"$t": "enum", "type": "hostile_targets:gadget", "v": "x"},
    "model-not-a-model": {"$t": "model", "type": "hostile_targets:NotAModel", "v": {}},
    "model-validator": {"$t": "model", "type": "hostile_targets:LoudModel", "v": {"name": "x"}},
    "object-base-os-system": {"$t": "object", "type": "os:system", "base": "touch {trail}"},
    "object-base-constructor": {"$t": "object", "type": "hostile_targets:LoudStr", "base": "x"},
    "object-constructor": {"$t": "object", "type": "hostile_targets:LoudNew", "state": {"a": 1}},
    "exception-constructor": {"$t": "exception", "type": "hostile_targets:LoudError", "message": "x", "args": ["x"]},
}


def _filled(value: Any, trail: Path) -> Any:
    if isinstance(value, dict):
        return {k: _filled(v, trail) for k, v in value.items()}
    return value.format(trail=trail) if isinstance(value, str) else value


@pytest.mark.parametrize("name", list(GADGETS))
def test_a_decoder_gadget_runs_nothing_at_replay(hostile, keys, trail, name):
    path = hostile(args=[_filled(GADGETS[name], trail)])
    try:
        fluxrun.replay.run(path, keys.replay)
    except FluxRunError as refused:  # a value of the wrong kind is refused (UnreplayableValue), naming its type
        assert GADGETS[name]["type"] in str(refused)
    assert not trail.exists(), trail.read_text()


def test_a_type_path_never_imports_a_module_that_is_not_loaded_or_the_apps(monkeypatch):
    monkeypatch.delitem(sys.modules, "this", raising=False)  # a standard-library module this process has not loaded
    with pytest.raises(UnreplayableValue, match="this:s"):
        decode({"$t": "object", "type": "this:s", "state": {}})
    assert "this" not in sys.modules


def test_inspect_with_the_key_shows_values_without_running_them(hostile, keys, trail):
    path = hostile(args=[_filled(GADGETS["enum-os-system"], trail), _filled(GADGETS["exception-constructor"], trail)])
    result = runner.invoke(app, ["bundle", "inspect", str(path), "--key", str(keys.replay), "--show-secrets"])
    assert result.exit_code == 0, result.output
    assert "os:system" in result.output and "hostile_targets:LoudError" in result.output
    assert not trail.exists(), trail.read_text()


def test_pytest_bundle_guards_refuse_a_hostile_entry_point(pytester, hostile, keys, trail, monkeypatch):
    monkeypatch.setenv("FLUXRUN_REPLAY_KEY", str(keys.replay))
    (pytester.path / "bundles").mkdir()
    shutil.copy(hostile(entry="os:system", args=[f"touch {trail}"]), pytester.path / "bundles" / "evil.fluxrun")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--fluxrun-bundles", "bundles")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*os:system*--fluxrun-app*"])
    assert not trail.exists()


def test_pytest_bundle_guards_replay_the_app_the_operator_names(pytester, hostile, keys, trail, monkeypatch):
    monkeypatch.setenv("FLUXRUN_REPLAY_KEY", str(keys.replay))
    (pytester.path / "bundles").mkdir()
    shutil.copy(hostile(entry="os:system", args=[f"touch {trail}"]), pytester.path / "bundles" / "evil.fluxrun")
    pytester.makepyfile(guarded="def handle(command):\n    return 'fixed'\n")
    pytester.syspathinsert()
    args = ("-p", "no:cacheprovider", "--fluxrun-bundles", "bundles")
    pytester.runpytest_subprocess(*args, "--fluxrun-app", "guarded:handle").assert_outcomes(passed=1)
    pytester.makeini("[pytest]\nfluxrun_app = guarded:handle\n")
    pytester.runpytest_subprocess(*args).assert_outcomes(passed=1)
    assert not trail.exists()


# -- legitimate values keep their state ----------------------------------------------------------------------


class Pair(NamedTuple):
    left: int
    right: int


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Line(hostile_targets.BaseModel):
    start: Point
    label: str = "line"
    owner: hostile_targets.LoudModel | None = None


class Declined(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(f"declined: {code}")
        self.code = code


def test_legitimate_values_are_rebuilt_with_their_state(trail):
    line = Line.model_construct(start=Point(1, 2), owner=hostile_targets.LoudModel.model_construct(name="o"))
    values = [hostile_targets.Color.RED, Pair(1, 2), Point(3, 4), line, Declined("card"), KeyError("k")]
    color, pair, point, rebuilt, declined, key_error = decode(encode(values))
    assert color is hostile_targets.Color.RED
    assert type(pair) is Pair and pair.right == 2
    assert point == Point(3, 4)
    assert type(rebuilt) is Line and rebuilt.start == Point(1, 2) and rebuilt.label == "line"
    assert type(rebuilt.owner) is hostile_targets.LoudModel and rebuilt.owner.name == "o"
    assert rebuilt.model_fields_set == {"start", "owner"}
    assert type(declined) is Declined and declined.code == "card" and declined.args == ("declined: card",)
    assert type(key_error) is KeyError and key_error.args == ("k",)
    assert not trail.exists()
