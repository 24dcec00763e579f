"""An in-process replay (isolation off) starts no process: each way of spawning one raises LiveIOBlocked naming it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys

import pytest

import fluxrun

SPAWN = {"how": None}
MARKER = "fluxrun-marker-command"


def _spawn(how: str) -> None:
    argv = [sys.executable, "-c", f"print('{MARKER}')"]
    if how == "subprocess.run":
        subprocess.run(argv, check=True, capture_output=True)
    elif how == "Popen":
        from subprocess import Popen  # a name bound before the replay started is blocked too

        Popen(argv).wait()
    elif how == "check_output":
        subprocess.check_output(argv)
    elif how == "os.system":
        os.system(f"echo {MARKER} > /dev/null")
    elif how == "os.execv":
        os.execv(sys.executable, argv)
    elif how == "os.execlp":
        os.execlp("echo", "echo", MARKER)
    elif how == "os.spawnv":
        os.spawnv(os.P_WAIT, sys.executable, argv)
    elif how == "os.spawnlp":
        os.spawnlp(os.P_WAIT, "echo", "echo", MARKER)
    elif how == "os.posix_spawn":
        os.posix_spawn(sys.executable, argv, {})
    elif how == "asyncio":

        async def child() -> None:
            process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL)
            await process.wait()

        asyncio.run(child())


@fluxrun.capture
def build_report(order: int) -> None:
    if SPAWN["how"]:
        _spawn(SPAWN["how"])
    raise RuntimeError(f"report {order} failed")


@pytest.fixture
def bundle(captured):
    SPAWN["how"] = None
    with pytest.raises(RuntimeError):
        build_report(3)
    (path,) = captured.files()
    fluxrun.shutdown()
    yield path
    SPAWN["how"] = None


WAYS = [
    "subprocess.run",
    "Popen",
    "check_output",
    "os.system",
    "os.execv",
    "os.execlp",
    "os.spawnv",
    "os.spawnlp",
    "os.posix_spawn",
    "asyncio",
]


@pytest.mark.parametrize("how", WAYS)
def test_spawning_a_process_in_an_in_process_replay_is_blocked_naming_the_command(bundle, keys, how):
    SPAWN["how"] = how
    with pytest.raises(fluxrun.LiveIOBlocked) as raised:
        fluxrun.replay.run(bundle, keys.replay, app=build_report, isolate=False)
    message = str(raised.value)
    assert MARKER in message or "echo" in message, message
    assert "test_replay_subprocess.py" in message  # the app's line that spawned it
    assert "replay never reaches live systems" in message


def test_the_blocks_are_lifted_when_the_replay_ends(bundle, keys):
    real = (subprocess.Popen.__init__, os.system, os.execv, os.spawnv, os.posix_spawn)
    result = fluxrun.replay.run(bundle, keys.replay, app=build_report, isolate=False)
    assert result.outcome == "reproduced"
    assert (subprocess.Popen.__init__, os.system, os.execv, os.spawnv, os.posix_spawn) == real
    assert subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True, check=True).stdout == b"1\n"


def test_a_spawn_the_app_swallows_still_fails_the_replay(bundle, keys):
    SPAWN["how"] = "swallowed"

    def swallowing(order: int) -> None:
        with contextlib.suppress(Exception):
            subprocess.run(["true"], check=True)
        raise RuntimeError(f"report {order} failed")

    with pytest.raises(fluxrun.LiveIOBlocked, match="process true"):
        fluxrun.replay.run(bundle, keys.replay, app=swallowing, isolate=False)
