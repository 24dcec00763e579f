"""`fluxrun export-test`: a bundle becomes a pytest file a person can read, review and edit.

A bundle's summary is text from whoever signed it, and the file written here is code the developer runs.
So the signature is verified against the replay key before anything is written, and every value from the
bundle enters the file as data: string literals through `repr`, docstring and comment text escaped (no
quote, backslash, line break, control or non-ASCII character survives raw), test names reduced to
`[a-z0-9_]`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from fluxrun.bundle import ReplayKey, SealedBundle, load_replay_key, load_replay_keys, read_bundle, verify_signature
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
    """A piece of a Python identifier: ASCII letters, digits and underscores only."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", text).strip("_").lower()[:60] or "bundle"


def _inert(value: object) -> str:
    """Text that can sit inside a triple-quoted docstring or a comment and stay text.

    Backslashes, line breaks, control and non-ASCII characters become Python escapes and double quotes
    become \\", so the text cannot close the docstring or end the comment line; inside the docstring the
    escapes read back as the original text.
    """
    return str(value).encode("unicode_escape").decode("ascii").replace('"', '\\"')


def _replay_key(key: Path | None) -> ReplayKey:
    if key is not None:
        return load_replay_key(key)
    env = os.environ.get("FLUXRUN_REPLAY_KEY")
    if not env:
        raise FluxRunError(
            "export-test verifies the bundle's signature before writing code from it: pass --key "
            "path/to/replay.key or set FLUXRUN_REPLAY_KEY (the replay.key written by `fluxrun keys generate`)"
        )
    return load_replay_keys([Path(p) for p in env.split(os.pathsep) if p])


def _verified(bundle: Path, key: ReplayKey) -> SealedBundle:
    """The bundle, once its signature is known to come from one of the app's signing keys."""
    sealed = read_bundle(bundle.read_bytes())
    verify_signature(sealed, key.signers)  # BundleError (tampered, unknown_key_id) says what is wrong
    return sealed


def write_test(bundle: Path, out: Path | None, *, expect: str, key: Path | None = None) -> Path:
    if expect not in ("fixed", "reproduce"):
        raise FluxRunError(f"--expect {expect!r}: use fixed or reproduce")
    sealed = _verified(bundle, _replay_key(key))
    summary = sealed.summary
    route = f"{summary.get('method') or ''} {summary.get('route') or ''}".strip()
    raw_error = summary.get("error")
    error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
    error_type = str(error.get("type") or summary.get("outcome") or "failure")
    name = _slug(f"{route} {error_type.rsplit(':', 1)[-1]} {str(summary.get('fingerprint') or '')[:8]}")
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
            title=_inert(f"{route or summary.get('entry')}: {recorded}"),
            bundle_id=_inert(sealed.bundle_id),
            started_at=_inert(summary.get("started_at")),
            bundle=relative,
            expect=expect,
            name=name,
            recorded=_inert(recorded.replace("\n", " ")[:100]),
            outcome="fixed" if expect == "fixed" else "reproduced",
            extra=extra,
        )
    )
    return out
