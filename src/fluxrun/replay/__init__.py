"""Replay: a stored failure becomes a deterministic run of today's code, served from the recording.

`fluxrun.replay` is both this module and a decorator for tests::

    result = fluxrun.replay.run("tests/fluxrun/abc.fluxrun", key="replay.key")

    @fluxrun.replay("tests/fluxrun/abc.fluxrun")            # passes when the failure is fixed
    def test_checkout_regression(fluxrun_replay): ...

    @fluxrun.replay("tests/fluxrun/abc.fluxrun", expect="reproduce")   # still fails the same way
    def test_checkout_bug(): ...
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

from fluxrun.replay.answers import Answers
from fluxrun.replay.result import Outcome, ReplayResult
from fluxrun.replay.runner import ReplayExpectationError, check, run

__all__ = ["Answers", "Outcome", "ReplayExpectationError", "ReplayResult", "check", "replay_test", "run"]


def replay_test(
    bundle: str,
    *,
    expect: str = "fixed",
    key: str | None = None,
    app: Any = None,
    strict: bool = True,
    answers: Answers | None = None,
) -> Callable[[Any], Any]:
    """Mark a pytest test to replay `bundle` (the pytest plugin runs it; requires pytest)."""
    try:
        import pytest
    except ImportError:  # pragma: no cover - only used inside pytest
        raise RuntimeError("@fluxrun.replay marks pytest tests; install pytest") from None
    if expect not in ("fixed", "reproduce"):
        raise ValueError(f"expect={expect!r}: use 'fixed' (the default) or 'reproduce'")
    return pytest.mark.fluxrun_replay(bundle, expect=expect, key=key, app=app, strict=strict, answers=answers)


class _CallableModule(types.ModuleType):
    """Lets `@fluxrun.replay(...)` decorate a test while `fluxrun.replay.run(...)` stays a module function."""

    def __call__(
        self,
        bundle: str,
        *,
        expect: str = "fixed",
        key: str | None = None,
        app: Any = None,
        strict: bool = True,
        answers: Answers | None = None,
    ) -> Callable[[Any], Any]:
        return replay_test(bundle, expect=expect, key=key, app=app, strict=strict, answers=answers)


sys.modules[__name__].__class__ = _CallableModule
