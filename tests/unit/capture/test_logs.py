"""Log records emitted during an execution are recorded; FluxRun's own are not."""

from __future__ import annotations

import logging

import pytest

import fluxrun

log = logging.getLogger("shop.checkout")


def test_log_records_are_recorded(captured):
    log.setLevel(logging.INFO)

    @fluxrun.capture
    def job():
        log.info("charging %s", "order-17")
        try:
            1 / 0
        except ZeroDivisionError:
            log.exception("failed")
        logging.getLogger("fluxrun").warning("internal, not the app's")
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        job()
    events = captured.events("log")
    assert [(e["data"]["level"], e["data"]["message"]) for e in events] == [
        ("INFO", "charging order-17"),
        ("ERROR", "failed"),
    ]
    assert events[1]["data"]["exc_type"] == "ZeroDivisionError"


@pytest.mark.anyio
async def test_async_code_records_logs(captured):
    @fluxrun.capture
    async def job():
        log.warning("slow upstream")
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        await job()
    assert captured.events("log")[0]["call"] == "WARNING shop.checkout"
