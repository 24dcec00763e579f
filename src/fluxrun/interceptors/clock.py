"""Time: `time.time/time_ns/monotonic(_ns)/perf_counter(_ns)` and `datetime.now/utcnow/today`, `date.today`.

Recorded with the values the code saw; at replay the same calls return those values, per task and
call site. asyncio's own clock reads come from the standard library and stay real at replay, so the
event loop's timers keep working (the freezegun/asyncio trap does not arise).

The `time` functions are patched on the module with `value_patch` closures. `datetime` is a C type whose methods
cannot be replaced, so app modules see `CapturedDatetime`/`CapturedDate`: subclasses whose
constructors hand back real `datetime`/`date` objects (pickling, orjson and `type(x) is datetime`
keep working) and whose `isinstance` checks accept real instances. The app's own modules are rebound,
and so is an installed package's module whose code calls `now()`, `utcnow()` or `today()` (PyJWT comparing
`exp` with `datetime.now(timezone.utc)`): the tape decides what the app can observe, wherever the read
happens. Other package modules and the standard library keep the real classes (`type(x) is datetime` there
stays true). An installed package's `time.time()`-style reads go through the patched module attributes and
are recorded too; its `from time import time` names are not rebound, so a framework's own timing
(FastAPI's telemetry) stays out of the tape. The standard library's clock reads (asyncio's loop clock,
logging's timestamps) are never recorded and stay real at replay.
"""

from __future__ import annotations

import datetime as _dt
import time
import types
from collections.abc import Callable
from typing import Any

from fluxrun._context import current
from fluxrun.interceptors.base import Patch, serve_call
from fluxrun.interceptors.hot_path import record_call, record_value, value_patch
from fluxrun.model.schema import EventDict, ValueData
from fluxrun.model.values import decode, encode

__all__ = ["CapturedDate", "CapturedDatetime", "ClockInterceptor"]

KIND = "time"
TIME_FUNCTIONS = ("time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns")
_real_datetime = _dt.datetime
_real_date = _dt.date


def _recorded_value(event: EventDict[ValueData]) -> Any:
    return event["data"]["value"]


def _encoded(result: Any) -> dict[str, Any]:
    return {"value": encode(result)}


def _decoded(event: EventDict[ValueData]) -> Any:
    return decode(event["data"]["value"])


def _datetime_call(call: str, real: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    scope = current()
    if scope is None:
        return real(*args)
    if scope.session is not None:
        return serve_call(scope, KIND, call, real, args, {}, _decoded)
    if call in _LEAN and (not args or args[0] is None or type(args[0]) is _dt.timezone):
        # C's now()/utcnow() read the system clock directly, and a fixed-offset tz is C code too
        return record_value(scope, KIND, call, real, args, {}, encoded=True)
    # not the lean path: C's date.today() reads time.time() itself, which must not be recorded again,
    # and a Python tzinfo may read patched functions
    return record_call(scope, KIND, call, real, args, {}, _encoded)


_LEAN = frozenset({"datetime.now", "datetime.utcnow"})


class _DateMeta(type):
    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, _real_date)

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, _real_date)


class _DatetimeMeta(_DateMeta):
    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, _real_datetime)

    def __subclasscheck__(cls, sub: type) -> bool:
        return issubclass(sub, _real_datetime)


class CapturedDate(_real_date, metaclass=_DateMeta):
    """`datetime.date` as the app's modules see it while FluxRun is installed."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is CapturedDate:
            return _real_date(*args, **kwargs)
        return _real_date.__new__(cls, *args, **kwargs)

    @classmethod
    def today(cls) -> Any:
        return _datetime_call("date.today", _real_date.today, ())


class CapturedDatetime(_real_datetime, metaclass=_DatetimeMeta):
    """`datetime.datetime` as the app's modules see it while FluxRun is installed."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is CapturedDatetime:
            return _real_datetime(*args, **kwargs)
        return _real_datetime.__new__(cls, *args, **kwargs)

    @classmethod
    def now(cls, tz: _dt.tzinfo | None = None) -> Any:
        return _datetime_call("datetime.now", _real_datetime.now, (tz,))

    @classmethod
    def utcnow(cls) -> Any:
        return _datetime_call("datetime.utcnow", _real_datetime.utcnow, ())

    @classmethod
    def today(cls) -> Any:
        return _datetime_call("datetime.today", _real_datetime.today, ())


# Modules that read `time.*()` on every loop iteration, request, log record or command, where the read is never
# recorded and never needed at replay: a library's internals, not the app's IO. They are handed a view of `time`
# whose clock functions are the real ones: the same values, without a patched function's frame each time.
# The standard library's: three reads per aiohttp request through asyncio's `loop.time()`, two per requests call
# through its cookie jar, one per log record. redis-py's: two `time.monotonic()` reads per command (its timing
# for observability, health checks, pool waits; a cluster client's topology refreshes too), all inside the
# command FluxRun intercepts, where nothing is recorded and which replay answers without running (pub/sub, not
# intercepted, is refused at replay anyway).
CLOCK_READERS = (
    "asyncio.base_events",
    "http.cookiejar",
    "logging",
    "redis.client",
    "redis.cluster",
    "redis.asyncio.cluster",
    "redis.connection",
    "redis.asyncio.client",
    "redis.asyncio.connection",
)


def _real_clock_view(originals: dict[str, Callable[..., Any]]) -> types.ModuleType:
    """`time` as a module of `CLOCK_READERS` sees it while FluxRun is installed: the real clock functions,
    and every other name looked up on `time` itself when asked (`time.sleep` stays whatever `time` holds)."""
    view = types.ModuleType(time.__name__, time.__doc__)
    view.__dict__.update(originals)
    view.__getattr__ = lambda name: getattr(time, name)  # type: ignore[method-assign]
    return view


def _datetime_module_proxy() -> types.ModuleType:
    """What `import datetime` names in an app module: the real module but for the two captured classes."""
    proxy = types.ModuleType(_dt.__name__, _dt.__doc__)
    proxy.__dict__.update({k: v for k, v in vars(_dt).items() if k not in ("__name__", "__doc__")})
    proxy.datetime = CapturedDatetime  # type: ignore[attr-defined]
    proxy.date = CapturedDate  # type: ignore[attr-defined]
    return proxy


_CLOCK_NAMES = frozenset({"now", "utcnow", "today"})


def _reads_the_clock(code: types.CodeType) -> bool:
    if _CLOCK_NAMES.intersection(code.co_names):
        return True
    return any(isinstance(const, types.CodeType) and _reads_the_clock(const) for const in code.co_consts)


def package_rebinds(module: types.ModuleType, name: str) -> list[tuple[str, Any]]:
    """For an installed package's module bound to `datetime`/`date` (or the module) whose code asks them for
    the current time: (attribute, replacement) pairs. Empty for every other module (one dict pass)."""
    targets = {id(_real_datetime): CapturedDatetime, id(_real_date): CapturedDate, id(_dt): _MODULE_PROXY}
    names = [(attr, targets[id(value)]) for attr, value in vars(module).items() if id(value) in targets]
    names = [(attr, replacement) for attr, replacement in names if not attr.startswith("__")]
    if not names:
        return []
    try:
        spec = getattr(module, "__spec__", None)
        get_code = getattr(getattr(spec, "loader", None), "get_code", None)
        code = get_code(name) if get_code is not None else None
    except Exception:  # no source or bytecode to read: leave the module as it is
        return []
    return names if code is not None and _reads_the_clock(code) else []


class ClockInterceptor:
    kind = KIND

    def __init__(self) -> None:
        self._originals = {name: getattr(time, name) for name in TIME_FUNCTIONS}
        self._wrappers = {
            name: value_patch(real, KIND, f"time.{name}", _recorded_value, keywords=False)
            for name, real in self._originals.items()
        }
        self._view = _real_clock_view(self._originals)

    def patches(self) -> list[Patch]:
        return [Patch(time, name, wrapper) for name, wrapper in self._wrappers.items()]

    def reader_patch(self, name: str, module: types.ModuleType) -> Patch | None:
        """For a module of `CLOCK_READERS` bound to `time` (found when it is imported): its view."""
        if name not in CLOCK_READERS or vars(module).get("time") is not time:
            return None
        return Patch(module, "time", self._view)

    def rebind(self) -> dict[int, Any]:
        mapping: dict[int, Any] = {id(self._originals[name]): w for name, w in self._wrappers.items()}
        mapping[id(_real_datetime)] = CapturedDatetime
        mapping[id(_real_date)] = CapturedDate
        mapping[id(_dt)] = _MODULE_PROXY
        return mapping


_MODULE_PROXY = _datetime_module_proxy()
