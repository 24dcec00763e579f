"""Block process creation while a replay runs in this process: a spawned command is live IO too.

A replay in the isolated child is already covered by its audit hook and seccomp filter; an in-process
replay (`FLUXRUN_REPLAY_ISOLATE=0`, Windows) gets these patches instead, for the replay's duration, through
`blocking_sockets`: `subprocess.Popen` (and so `run`, `check_output`, asyncio's subprocesses), `os.system`,
`os.exec*`, `os.spawn*` and `os.posix_spawn(p)` raise `LiveIOBlocked` naming the command and the app's line.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from typing import Any

from fluxrun.interceptors.base import Patch

__all__ = ["process_patches"]


def _command(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(os.fsdecode(v) if isinstance(v, (str, bytes, os.PathLike)) else str(v) for v in value)
    return os.fsdecode(value) if isinstance(value, (str, bytes, os.PathLike)) else str(value)


def _blocked(what: str, command: Callable[..., Any]) -> Callable[..., Any]:
    def block(*args: Any, **kwargs: Any) -> Any:
        from fluxrun.replay.sockets import blocked_error

        try:
            name = command(*args, **kwargs)
        except Exception:
            name = "?"
        raise blocked_error(name, what)

    return block


def _spawn_command(path: Any, args: tuple[Any, ...]) -> str:
    if len(args) == 1 and isinstance(args[0], (list, tuple)):  # spawnv(mode, path, argv)
        return _command(args[0])
    return _command([a for a in args if not isinstance(a, dict)] or path)  # spawnl(mode, path, arg0, ..., env?)


def _popen_command(self: Any, args: Any, *rest: Any, **kwargs: Any) -> str:
    return _command(args)


def process_patches() -> list[Patch]:
    """The patches that stop a replay from starting a process (applied and restored with the socket blocks)."""
    patches = [
        Patch(subprocess.Popen, "__init__", _blocked("process", _popen_command)),
        Patch(os, "system", _blocked("shell command", lambda command, *a, **k: _command(command))),
    ]
    for name in ("execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe"):
        if hasattr(os, name):
            patches.append(Patch(os, name, _blocked("exec of", lambda path, args=(), *a, **k: _command(args or path))))
    for name in ("spawnv", "spawnve", "spawnvp", "spawnvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe"):
        if hasattr(os, name):
            patches.append(
                Patch(os, name, _blocked("process", lambda mode, path, *args, **k: _spawn_command(path, args)))
            )
    for name in ("posix_spawn", "posix_spawnp"):
        if hasattr(os, name):
            patches.append(Patch(os, name, _blocked("process", lambda path, argv=(), *a, **k: _command(argv or path))))
    return patches
