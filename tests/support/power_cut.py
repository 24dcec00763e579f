"""A simulated power cut for a process tree writing under one folder: keep only what was fsynced.

`PowerCut(root)` builds tests/support/crash_shim.c (gcc, installed when missing) and gives the environment
that loads it (`env`). The shim copies, at every fsync or fdatasync under `root`, what that call makes durable:
a file's bytes, or a folder's entries. `baseline()` records the folder as it is (call it with nothing
running, after `os.sync()`), and `cut()`, after the processes were killed with SIGKILL, rebuilds `root` from
those copies: a name exists only if its folder was fsynced after it appeared (or it was there at the
baseline), and a file holds the bytes of its last fsync (empty if it never had one). Writes SQLite, the WAL
or the object store made without an fsync are lost, as a volatile disk cache would lose them.

It is a model, and a strict one: a real disk may keep more (pages written back early), never less.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from system_packages import ensure

__all__ = ["PowerCut"]

SOURCE = Path(__file__).with_name("crash_shim.c")


def build_shim(directory: Path) -> Path:
    gcc = ensure("gcc", "gcc", "/usr/bin/gcc")
    library = directory / "crash_shim.so"
    subprocess.run(
        [gcc, "-shared", "-fPIC", "-O2", "-o", str(library), str(SOURCE), "-ldl", "-lpthread"],
        check=True,
        capture_output=True,
    )
    return library


class PowerCut:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.work = Path(tempfile.mkdtemp(prefix="fluxrun-powercut-"))
        self.shadow = self.work / "shadow"
        self.shadow.mkdir()
        self.library = build_shim(self.work)

    @property
    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": str(self.library),
            "FLUXRUN_CRASH_ROOT": str(self.root),
            "FLUXRUN_CRASH_SHADOW": str(self.shadow),
        }

    def baseline(self) -> None:
        """Record `root` as durable as it is now (nothing may be writing to it)."""
        os.sync()
        for folder, dirs, files in os.walk(self.root):
            path = Path(folder)
            lines = [f"d {(path / d).stat().st_ino} {d}" for d in dirs]
            lines += [f"f {(path / f).stat().st_ino} {f}" for f in files]
            (self.shadow / f"dir-{path.stat().st_ino}").write_text("".join(line + "\n" for line in lines))
            for name in files:
                shutil.copyfile(path / name, self.shadow / f"file-{(path / name).stat().st_ino}")

    def cut(self) -> dict[str, int]:
        """Replace `root` by its durable state; returns counts of what was kept and lost (for messages)."""
        root_inode = self.root.stat().st_ino
        rebuilt = self.work / "rebuilt"
        counts = {"files": 0, "empty": 0}
        self._rebuild(root_inode, rebuilt, counts)
        shutil.move(str(self.root), str(self.work / "before-the-cut"))
        shutil.move(str(rebuilt), str(self.root))
        return counts

    def _rebuild(self, inode: int, target: Path, counts: dict[str, int]) -> None:
        target.mkdir()
        listing = self.shadow / f"dir-{inode}"
        if not listing.exists():
            return  # a folder that was never fsynced: its entries were never durable
        for line in listing.read_text().splitlines():
            kind, number, name = line.split(" ", 2)
            if kind == "d":
                self._rebuild(int(number), target / name, counts)
                continue
            saved = self.shadow / f"file-{number}"
            if saved.exists():
                shutil.copyfile(saved, target / name)
                counts["files"] += 1
            else:
                (target / name).touch()  # the name survived, the bytes were never fsynced
                counts["empty"] += 1

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
