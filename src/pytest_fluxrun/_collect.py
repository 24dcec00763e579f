"""`--fluxrun-bundles DIR`: every bundle in a folder becomes a regression guard, no test code needed."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from fluxrun.bundle import read_bundle
from fluxrun.errors import FluxRunError
from pytest_fluxrun._run import judge

__all__ = ["BundleItem", "bundle_items"]


def _label(path: Path) -> str:
    try:
        summary = read_bundle(path.read_bytes()).summary
    except (FluxRunError, OSError):
        return f"replay[{path.stem}]"
    route = f"{summary.get('method') or ''} {summary.get('route') or ''}".strip()
    error = (summary.get("error") or {}).get("type", "") or summary.get("outcome") or ""
    error = error.rsplit(":", 1)[-1]
    parts = [route, error, (summary.get("fingerprint") or "")[:8], str(summary.get("bundle_id", path.stem))[:8]]
    return "replay[" + re.sub(r"\s+", " ", " ".join(p for p in parts if p)) + "]"


class BundleItem(pytest.Item):
    """One bundle replayed as a guard: it passes while the recorded failure stays fixed."""

    def __init__(self, *, bundle: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bundle = bundle
        self.add_marker(pytest.mark.fluxrun_replay(str(bundle), expect="fixed"))

    def runtest(self) -> None:
        judge(self)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.bundle, 0, self.name

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, pytest.fail.Exception):
            return str(excinfo.value.msg)
        return str(super().repr_failure(excinfo))


def bundle_items(session: pytest.Session, folder: Path) -> list[BundleItem]:
    if not folder.is_dir():
        raise pytest.UsageError(
            f"--fluxrun-bundles {folder}: no such folder (pull bundles with `fluxrun pull`, or fix the path)"
        )
    items = []
    for path in sorted(folder.rglob("*.fluxrun")):
        name = _label(path)
        try:
            relative = path.relative_to(session.config.rootpath)
        except ValueError:
            relative = path
        items.append(BundleItem.from_parent(session, name=name, nodeid=f"{relative}::{name}", bundle=path, path=path))
    return items
