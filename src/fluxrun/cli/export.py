"""`fluxrun export-test`: a bundle becomes a pytest file a person can read, review and edit."""

from __future__ import annotations

import os
import re
from pathlib import Path

from fluxrun.bundle import read_bundle
from fluxrun.errors import FluxRunError

__all__ = ["write_test"]

TEMPLATE = '''"""Regression test for {title}.

Exported by `fluxrun export-test` from bundle {bundle_id} (captured {started_at}).
Run with FLUXRUN_REPLAY_KEY=path/to/replay.key. Replay serves every recorded call (HTTP, host calls,
env, time, randomness) from the bundle and blocks the network, so this test is deterministic.
"""

import fluxrun

BUNDLE = {bundle!r}


@fluxrun.replay(BUNDLE, expect={expect!r})
def test_{name}(fluxrun_replay):
    # recorded: {recorded}
    assert fluxrun_replay.outcome == {outcome!r}
{extra}'''


def _slug(text: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_").lower()[:60] or "bundle"


def write_test(bundle: Path, out: Path | None, *, expect: str) -> Path:
    if expect not in ("fixed", "reproduce"):
        raise FluxRunError(f"--expect {expect!r}: use fixed or reproduce")
    summary = read_bundle(bundle.read_bytes()).summary
    route = f"{summary.get('method') or ''} {summary.get('route') or ''}".strip()
    error = summary.get("error") or {}
    error_type = str(error.get("type") or summary.get("outcome") or "failure")
    name = _slug(f"{route} {error_type.rsplit(':', 1)[-1]} {(summary.get('fingerprint') or '')[:8]}")
    if out is None:
        out = bundle.parent / f"test_{name}.py"
    if out.exists():
        raise FluxRunError(f"{out} exists; pass --out to write somewhere else")
    try:
        relative = os.path.relpath(bundle.resolve(), Path.cwd())
    except ValueError:
        relative = str(bundle.resolve())
    extra = ""
    if summary.get("execution") in ("asgi", "wsgi") and expect == "fixed":
        extra = '    assert fluxrun_replay.response is not None and fluxrun_replay.response["status"] < 500\n'
    recorded = f"{error_type}: {error.get('message', '')}" if error else f"HTTP {summary.get('status')}"
    out.write_text(
        TEMPLATE.format(
            title=f"{route or summary.get('entry')}: {recorded}".replace('"""', "'''"),
            bundle_id=summary.get("bundle_id"),
            started_at=summary.get("started_at"),
            bundle=relative,
            expect=expect,
            name=name,
            recorded=recorded.replace("\n", " ")[:100],
            outcome="fixed" if expect == "fixed" else "reproduced",
            extra=extra,
        )
    )
    return out
