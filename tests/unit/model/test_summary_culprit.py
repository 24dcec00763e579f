"""The plaintext summary names where the app raised (its culprit frame), so the dashboard can show it before
anyone unlocks the payload: file, line, function and module of the innermost in-app frame, and nothing else."""

from __future__ import annotations

import pytest

import fluxrun


def _helper(prices: dict[str, int]) -> int:
    return prices["price"]  # the line that raises


@fluxrun.capture
def checkout(prices: dict[str, int]) -> int:
    return _helper(prices) * 2


def test_summary_names_the_app_frame_that_raised(captured) -> None:
    with pytest.raises(KeyError):
        checkout({"secret": 4111})
    [bundle] = captured.bundles()
    culprit = bundle.summary["error"]["culprit"]
    assert culprit == {
        "file": __file__,
        "line": _helper.__code__.co_firstlineno + 1,
        "function": "_helper",
        "module": __name__,
    }
    # no source line and no value: the summary stays what the server may read
    assert "4111" not in str(bundle.summary) and "prices[" not in str(bundle.summary)


def test_summary_culprit_is_none_when_the_error_has_no_frames() -> None:
    from fluxrun.model.export import culprit

    assert culprit({"type": "builtins:KeyError", "message": "x", "frames": []}) is None
    library_only = [{"file": "/lib/a.py", "line": 3, "function": "f", "module": "a", "in_app": False, "code": "x"}]
    assert culprit({"frames": library_only}) == {"file": "/lib/a.py", "line": 3, "function": "f", "module": "a"}
