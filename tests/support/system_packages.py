"""Programs the tests start themselves (PostgreSQL, redis-server, ...) come from Debian's packages, and the
test command installs a missing one: a fresh machine needs nothing preinstalled. Installs are serialised
with a lock file, so pytest-xdist workers never run apt-get at the same time."""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["ensure"]

_LOCK = Path("/tmp/fluxrun-tests-apt.lock")


def _find(binary: str, patterns: tuple[str, ...]) -> str | None:
    found = shutil.which(binary)
    if found:
        return found
    for pattern in patterns:
        for candidate in sorted(glob.glob(pattern), reverse=True):
            if os.access(candidate, os.X_OK):
                return candidate
    return None


def ensure(binary: str, package: str, *patterns: str) -> str:
    """The path of `binary` (on PATH or matching one of `patterns`), installing Debian's `package` if missing."""
    found = _find(binary, patterns)
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError(f"{binary} is missing: install Debian's {package} package (apt-get install -y {package})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with _LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = _find(binary, patterns)  # another worker may have installed it while we waited
        if found:
            return found
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
        if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
            done = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"apt-get install {package} failed: {done.stderr[-1000:]}")
    found = _find(binary, patterns)
    if not found:
        raise RuntimeError(f"installed {package}, but {binary} is still not found")
    return found
