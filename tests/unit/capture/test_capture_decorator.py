"""`@fluxrun.capture`: arguments, outcome, fingerprint, and which executions are kept."""

from __future__ import annotations

import pytest

import fluxrun
from fluxrun.model.values import decode


class OutOfStock(Exception):
    pass


def reserve(sku):
    raise OutOfStock(f"{sku} is out of stock")


@fluxrun.capture
def checkout(sku, quantity=1):
    return reserve(sku)


@fluxrun.capture(name="nightly-sync")
async def nightly(batch):
    raise OutOfStock(batch)


def test_failure_records_arguments_error_frames_and_fingerprint(captured):
    with pytest.raises(OutOfStock):
        checkout("sku-1", quantity=2)
    payload = captured.one()
    assert payload["execution"] == "function"
    assert payload["entry"] == f"{__name__}:checkout"
    assert decode(payload["request"]["args"]) == ["sku-1"]
    assert decode(payload["request"]["kwargs"]) == {"quantity": 2}
    error = payload["outcome"]["error"]
    assert payload["outcome"]["kind"] == "error"
    assert error["type"] == f"{__name__}:OutOfStock"
    assert error["message"] == "sku-1 is out of stock"
    app_frames = [f["function"] for f in error["frames"] if f["in_app"]]
    assert app_frames[-2:] == ["checkout", "reserve"]
    assert error["frames"][-1]["code"] == 'raise OutOfStock(f"{sku} is out of stock")'


def test_fingerprint_is_stable_across_arguments_and_differs_by_path(captured):
    with pytest.raises(OutOfStock):
        checkout("sku-1")
    with pytest.raises(OutOfStock):
        checkout("sku-2", quantity=5)

    @fluxrun.capture
    def other_path():
        raise OutOfStock("elsewhere")

    with pytest.raises(OutOfStock):
        other_path()
    prints = [p["outcome"]["error"]["fingerprint"] for p in captured.payloads()]
    assert prints[0] == prints[1] != prints[2]
    bundle = captured.bundles()[0]
    assert bundle.sealed.summary["fingerprint"] == prints[0]


@pytest.mark.anyio
async def test_async_function_with_a_name(captured):
    with pytest.raises(OutOfStock):
        await nightly("batch-9")
    payload = captured.one()
    assert payload["request"]["route"] == "nightly-sync"
    assert payload["outcome"]["error"]["message"] == "batch-9"


def test_successful_executions_are_not_kept_by_default(captured):
    @fluxrun.capture
    def fine():
        return {"ok": True}

    assert fine() == {"ok": True}
    assert captured.payloads() == []


def test_sample_rate_keeps_successful_executions(capture_with):
    captured = capture_with(sample_rate=1.0)

    @fluxrun.capture
    def fine(x):
        return x * 2

    assert fine(21) == 42
    payload = captured.one()
    assert payload["outcome"] == {"kind": "ok", "value": 42}


def test_capture_without_init_just_runs():
    @fluxrun.capture
    def fine():
        return 1

    assert fine() == 1
