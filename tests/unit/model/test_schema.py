"""The TypedDicts of `fluxrun.model.schema` describe what a sealed bundle really holds: mypy checks the code
against them, this checks them against a captured payload and its summary."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from typing import Any

import pytest

import fluxrun
from fluxrun.model.schema import (
    EnvData,
    EventDict,
    EventError,
    HostData,
    LogData,
    SummaryEvent,
    TimerData,
    ValueData,
)

DATA = {"env": EnvData, "host": HostData, "log": LogData, "time": ValueData, "random": ValueData, "timer": TimerData}


@fluxrun.boundary("inventory.reserve")
def reserve(item: int) -> int:
    raise LookupError(f"no item {item}")


@fluxrun.capture
def checkout(item: int) -> None:
    time.time()
    random.random()
    time.sleep(0)
    os.environ.get("FLUXRUN_SCHEMA_TEST_SET")
    os.environ.get("FLUXRUN_SCHEMA_TEST_UNSET")
    logging.getLogger("schema-test").warning("reserving %s", item)
    with contextlib.suppress(LookupError):
        reserve(item)
    raise RuntimeError("checkout failed")


def _conforms(value: dict[str, Any], schema: Any, where: str) -> None:
    keys, known = set(value), set(schema.__annotations__)
    assert schema.__required_keys__ <= keys, f"{where}: missing {sorted(schema.__required_keys__ - keys)}"
    assert keys <= known, f"{where}: not in the schema {sorted(keys - known)}"


def test_a_captured_payload_and_summary_match_the_schema(captured, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUXRUN_SCHEMA_TEST_SET", "on")
    monkeypatch.delenv("FLUXRUN_SCHEMA_TEST_UNSET", raising=False)
    with pytest.raises(RuntimeError):
        checkout(7)
    [bundle] = captured.bundles()
    events = bundle.payload["events"]
    assert {e["kind"] for e in events} >= set(DATA)
    for event in events:
        where = f"{event['kind']} event #{event['seq']}"
        _conforms(event, EventDict, where)
        if "error" in event:
            _conforms(event["error"], EventError, f"the error of {where}")
        _conforms(event["data"], DATA[event["kind"]], f"the data of {where}")
    assert any(e["kind"] == "env" and e["error"].get("present") is False for e in events if "error" in e)
    assert any(e["kind"] == "host" and e["error"]["type"].endswith("LookupError") for e in events if "error" in e)
    for entry in bundle.summary["events"]:
        _conforms(entry, SummaryEvent, f"summary entry #{entry['seq']}")
