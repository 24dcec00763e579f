"""Time reads inside a captured execution are recorded with the values the code saw."""

from __future__ import annotations

import asyncio
import datetime as dt_module
import pickle
import time
from datetime import date, datetime
from time import perf_counter as imported_perf_counter

import pytest

import fluxrun

# Kept in a tuple: FluxRun rebinds module globals bound to the datetime class, not containers.
_REAL = (type(dt_module.datetime.max), type(dt_module.date.max))


def test_time_functions_record_the_values_the_code_saw(captured):
    seen = []

    @fluxrun.capture
    def job():
        seen.extend(
            [
                time.time(),
                time.time_ns(),
                time.monotonic(),
                time.monotonic_ns(),
                time.perf_counter(),
                time.perf_counter_ns(),
            ]
        )
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        job()
    events = captured.events("time")
    assert [e["call"] for e in events] == [
        "time.time", "time.time_ns", "time.monotonic", "time.monotonic_ns", "time.perf_counter", "time.perf_counter_ns",
    ]  # fmt: skip
    assert [e["data"]["value"] for e in events] == seen
    assert all(e["site"].startswith(f"{__name__}:") for e in events)


def test_from_imported_names_in_app_modules_are_recorded(captured):
    @fluxrun.capture
    def job():
        return imported_perf_counter(), 1 / 0

    with pytest.raises(ZeroDivisionError):
        job()
    assert [e["call"] for e in captured.events("time")] == ["time.perf_counter"]


def test_datetime_reads_are_recorded_and_stay_real_datetimes(captured):
    seen = {}

    @fluxrun.capture
    def job():
        seen["now"] = datetime.now()
        seen["utc"] = datetime.now(dt_module.UTC)
        seen["today"] = date.today()
        seen["module_style"] = dt_module.datetime.now()
        raise ValueError("x")

    with pytest.raises(ValueError):
        job()
    assert type(seen["now"]) is _REAL[0]  # not a subclass: orjson, pickle and `type(x) is` keep working
    assert isinstance(seen["now"], datetime) and isinstance(_REAL[0](2020, 1, 1), datetime)
    assert pickle.loads(pickle.dumps(seen["now"])) == seen["now"]
    events = captured.events("time")
    assert [e["call"] for e in events] == ["datetime.now", "datetime.now", "date.today", "datetime.now"]
    assert events[1]["data"]["value"] == {"$t": "datetime", "v": seen["utc"].isoformat()}
    assert events[2]["data"]["value"] == {"$t": "date", "v": seen["today"].isoformat()}


def test_constructing_datetimes_gives_real_instances(captured):
    made = datetime(2024, 5, 1, 12, 0)
    assert type(made) is _REAL[0]
    assert type(datetime.fromisoformat("2024-05-01T12:00:00")) is _REAL[0]
    assert type(date(2024, 5, 1)) is _REAL[1]


@pytest.mark.anyio
async def test_async_code_records_time_and_the_event_loop_clock_stays_out(captured):
    @fluxrun.capture
    async def job():
        await asyncio.wait_for(asyncio.sleep(0), timeout=5)  # asyncio reads the monotonic clock internally
        time.time()
        raise RuntimeError("late")

    with pytest.raises(RuntimeError):
        await job()
    assert [e["call"] for e in captured.events() if e["kind"] == "time"] == ["time.time"]


def test_nothing_is_recorded_outside_an_execution(captured):
    time.time()
    datetime.now()
    assert captured.payloads() == []


def test_shutdown_restores_the_real_functions(keys, tmp_path):
    original_time, original_datetime = time.time, datetime
    fluxrun.init(directory=tmp_path, capture_key=keys.capture)
    assert time.time is not original_time
    assert globals()["datetime"] is not original_datetime
    fluxrun.shutdown()
    assert time.time is original_time
    assert globals()["datetime"] is original_datetime


def test_the_standard_librarys_own_clock_reads_stay_real_and_unrecorded(captured):
    """asyncio's loop clock, the cookie jar's and logging's timestamps read the real clock functions (no
    FluxRun frame per event-loop iteration), anything else they ask of `time` is what `time` holds, and
    shutdown gives them `time` back."""
    import asyncio.base_events
    import http.cookiejar
    import logging

    readers = (asyncio.base_events, http.cookiejar, logging)
    real_monotonic = vars(time.monotonic).get("__wrapped__", time.monotonic)
    try:
        assert time.monotonic is not real_monotonic  # the app's reads are patched

        @fluxrun.capture
        async def job():
            loop = asyncio.get_running_loop()
            before = loop.time()
            await asyncio.sleep(0.01)
            logging.getLogger("clock-test").warning("slept")
            assert loop.time() > before
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            asyncio.run(job())
        assert captured.events("time") == []
        for module in readers:  # found at the latest when an execution starts after their import
            assert module.time.monotonic is real_monotonic and module.time.time_ns is not time.time_ns
            assert module.time.sleep is time.sleep and module.time.strftime is time.strftime
    finally:
        fluxrun.shutdown()
    assert all(module.time is time for module in readers)


APP_DECLARING_MODELS_AFTER_INIT = """
from datetime import datetime

import fluxrun

fluxrun.init(directory={bundles!r}, capture_key={key!r})  # at the top of the app module, as the README shows

from pydantic import BaseModel
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Order(Base):  # SQLAlchemy maps `Mapped[datetime]` by the class itself
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    placed: Mapped[datetime]


class OrderIn(BaseModel):  # and so does pydantic (FastAPI and SQLModel bodies)
    placed: datetime


@fluxrun.capture
def stamp() -> datetime:
    return datetime.now()
"""


def test_a_module_declaring_models_after_init_sees_the_real_datetime_class(tmp_path, keys, monkeypatch):
    """`fluxrun.init()` at the top of a module that then declares models: the module is still being imported,
    so its `datetime` is left alone until it has been (class bodies see the real class); its calls are then
    recorded like any module's."""
    import importlib
    import sys

    real_datetime = _REAL[0]
    source = APP_DECLARING_MODELS_AFTER_INIT.format(bundles=str(tmp_path / "bundles"), key=str(keys.capture))
    (tmp_path / "orders_app.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        app = importlib.import_module("orders_app")
        assert app.OrderIn.model_fields["placed"].annotation is real_datetime
        assert app.Order.__table__.c.placed.type.python_type is real_datetime
        assert type(app.stamp()) is real_datetime
        assert app.datetime is not real_datetime  # rebound once it was imported, at the first execution's start
    finally:
        fluxrun.shutdown()
        sys.modules.pop("orders_app", None)
