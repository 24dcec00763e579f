"""The local-folder sink (`FLUXRUN_DIR`): the default when no DSN is set.

Files are written to a temporary name and renamed, so a reader never sees half a bundle.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["FolderSink"]


class FolderSink:
    """Writes each bundle as one file; the write is done when `write` returns, so flushing is immediate."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def write(self, name: str, data: bytes) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"{name}.fluxrun"
        tmp = self.directory / f".{name}.fluxrun.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, final)
        return final

    def flush(self, timeout: float) -> bool:
        return True

    def close(self, timeout: float) -> bool:
        return True

    def stats(self) -> dict[str, int]:
        return {}
