"""A JSON-safe, round-trippable encoding of Python values for arguments, results and exceptions.

Plain JSON values stand for themselves. Everything else becomes a tagged object `{"$t": tag, ...}`
so replay can rebuild it: bytes, tuples, sets, datetimes, decimals, UUIDs, enums, dataclasses and
other objects with a `__dict__` (rebuilt by type path without running `__init__`), and exceptions.
What cannot be rebuilt is kept as a `repr` marked `"$t": "repr"`, and replay says so instead of guessing.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import decimal
import enum
import importlib
import math
import uuid
from typing import Any

__all__ = ["MAX_DEPTH", "decode", "encode", "type_path"]

MAX_DEPTH = 24
_MAX_INT = 2**63 - 1
_TAG = "$t"


def type_path(tp: type) -> str:
    return f"{tp.__module__}:{tp.__qualname__}"


MAX_BYTES = 1 << 20  # strings and bytes longer than this are truncated (and marked) by default


def encode(value: Any, *, max_bytes: int = MAX_BYTES, _depth: int = 0) -> Any:
    """Encode `value` as JSON-safe data. Strings and bytes longer than `max_bytes` are truncated and marked."""
    if value is None or value is True or value is False:
        return value
    tp = type(value)
    if tp is str:
        if len(value) > max_bytes:
            return {_TAG: "str", "v": value[:max_bytes], "truncated": True, "size": len(value)}
        return value
    if tp is int:
        return value if -_MAX_INT <= value <= _MAX_INT else {_TAG: "int", "v": str(value)}
    if tp is float:
        return value if math.isfinite(value) else {_TAG: "float", "v": repr(value)}
    if _depth >= MAX_DEPTH:
        return {_TAG: "repr", "type": type_path(tp), "v": "<nested too deeply>"}
    depth = _depth + 1
    if tp is list:
        if all_plain(value, max_bytes):
            return value.copy()
        return [encode(v, max_bytes=max_bytes, _depth=depth) for v in value]
    if tp is dict:
        plain = _plain_dict(value, max_bytes)
        if plain:
            return value.copy()
        if plain is None:  # string keys, some value needs encoding
            return {k: encode(v, max_bytes=max_bytes, _depth=depth) for k, v in value.items()}
        return {
            _TAG: "dict",
            "v": [
                [encode(k, max_bytes=max_bytes, _depth=depth), encode(v, max_bytes=max_bytes, _depth=depth)]
                for k, v in value.items()
            ],
        }
    if tp is tuple:
        return {_TAG: "tuple", "v": [encode(v, max_bytes=max_bytes, _depth=depth) for v in value]}
    if tp in (bytes, bytearray, memoryview):
        raw = bytes(value)
        out: dict[str, Any] = {_TAG: "bytes", "v": base64.b64encode(raw[:max_bytes]).decode()}
        if len(raw) > max_bytes:
            out.update(truncated=True, size=len(raw))
        return out
    if tp in (set, frozenset):
        items = [encode(v, max_bytes=max_bytes, _depth=depth) for v in value]
        with contextlib.suppress(Exception):  # a failing repr keeps iteration order
            items.sort(key=repr)
        return {_TAG: tp.__name__, "v": items}
    fast = _FAST.get(tp)
    if fast is not None:
        return fast(value)
    return _encode_other(value, tp, max_bytes, depth)


def all_plain(values: Any, max_bytes: int) -> bool:
    """True when every value encodes as itself (the common JSON-ish case): the container is copied as is."""
    for v in values:
        tv = type(v)
        if tv is str:
            if len(v) > max_bytes:
                return False
        elif tv is int:
            if not -_MAX_INT <= v <= _MAX_INT:
                return False
        elif tv is float:
            if not math.isfinite(v):
                return False
        elif v is not None and tv is not bool:
            return False
    return True


def _plain_dict(value: dict[Any, Any], max_bytes: int) -> bool | None:
    """One pass over a dict: True when it encodes as itself (string keys, plain values), None when its
    keys are strings but some value needs encoding, False when a key is not a string (or is the tag)."""
    plain: bool | None = True
    for k, v in value.items():
        if type(k) is not str or k == _TAG:
            return False
        if plain:
            tv = type(v)
            if tv is str:
                if len(v) > max_bytes:
                    plain = None
            elif tv is int:
                if not -_MAX_INT <= v <= _MAX_INT:
                    plain = None
            elif tv is float:
                if not math.isfinite(v):
                    plain = None
            elif v is not None and tv is not bool:
                plain = None
    return plain


# Exact types seen on hot paths (uuid4 results, datetime.now), checked before the isinstance chain.
_FAST: dict[type, Any] = {
    uuid.UUID: lambda v: {_TAG: "uuid", "v": str(v)},
    dt.datetime: lambda v: {_TAG: "datetime", "v": v.isoformat()},
    dt.date: lambda v: {_TAG: "date", "v": v.isoformat()},
    decimal.Decimal: lambda v: {_TAG: "decimal", "v": str(v)},
}


def _encode_other(value: Any, tp: type, max_bytes: int, depth: int) -> Any:
    if isinstance(value, dt.datetime):
        return {_TAG: "datetime", "v": value.isoformat()}
    if isinstance(value, dt.date):
        return {_TAG: "date", "v": value.isoformat()}
    if isinstance(value, dt.time):
        return {_TAG: "time", "v": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {_TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, decimal.Decimal):
        return {_TAG: "decimal", "v": str(value)}
    if isinstance(value, uuid.UUID):
        return {_TAG: "uuid", "v": str(value)}
    if isinstance(value, enum.Enum):
        return {
            _TAG: "enum",
            "type": type_path(tp),
            "v": encode(value.value, max_bytes=max_bytes, _depth=depth),
        }
    if isinstance(value, BaseException):
        return {
            _TAG: "exception",
            "type": type_path(tp),
            "message": _safe_str(value),
            "args": encode(list(value.args), max_bytes=max_bytes, _depth=depth),
        }
    if isinstance(value, (str, int, float, list, dict, tuple)):  # subclasses of builtins: keep the type
        base: Any = next(b for b in (str, int, float, list, dict, tuple) if isinstance(value, b))
        return {
            _TAG: "object",
            "type": type_path(tp),
            "base": encode(base(value), max_bytes=max_bytes, _depth=depth),
        }
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        state: Any = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {
            _TAG: "object",
            "type": type_path(tp),
            "state": encode(state, max_bytes=max_bytes, _depth=depth),
        }
    model_dump = getattr(value, "model_dump", None)  # pydantic v2 models
    if callable(model_dump) and not isinstance(value, type):
        try:
            state = model_dump()
        except Exception:
            state = None
        if isinstance(state, dict):
            return {
                _TAG: "model",
                "type": type_path(tp),
                "v": encode(state, max_bytes=max_bytes, _depth=depth),
            }
    state = getattr(value, "__dict__", None)
    if isinstance(state, dict) and not isinstance(value, type) and not callable(value):
        return {
            _TAG: "object",
            "type": type_path(tp),
            "state": encode(state, max_bytes=max_bytes, _depth=depth),
        }
    return {_TAG: "repr", "type": type_path(tp), "v": _safe_repr(value)}


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def _safe_repr(value: object) -> str:
    try:
        text = repr(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"
    return text if len(text) <= 2000 else text[:2000] + "..."


class UnreplayableValue(Exception):
    """The recording kept only a description of this value; it cannot be rebuilt."""


def _resolve(path: str) -> Any:
    module_name, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def decode(data: Any) -> Any:
    """Rebuild a value written by `encode`. Raises `UnreplayableValue` for values kept only as text."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    tag = data.get(_TAG)
    if tag is None:
        return {k: decode(v) for k, v in data.items()}
    v: Any = data.get("v")
    simple = _SIMPLE_DECODERS.get(tag)
    if simple is not None:
        return simple(v)
    if tag == "dict":
        return {decode(k): decode(val) for k, val in v}
    if tag == "enum":
        return _resolve(data["type"])(decode(v))
    if tag == "exception":
        return _rebuild_exception(data)
    if tag == "model":
        return _resolve(data["type"]).model_validate(decode(v))
    if tag == "object":
        cls = _resolve(data["type"])
        if "base" in data:
            return cls(decode(data["base"]))
        obj = cls.__new__(cls)
        obj.__dict__.update(decode(data["state"]))
        return obj
    raise UnreplayableValue(f"the recording kept only a description of a {data.get('type', tag)}: {v!r}")


def _rebuild_exception(data: dict[str, Any]) -> BaseException:
    try:
        cls = _resolve(data["type"])
        if isinstance(cls, type) and issubclass(cls, BaseException):
            try:
                exc: BaseException = cls(*decode(data["args"]))
            except Exception:
                exc = cls.__new__(cls)
                exc.args = tuple(decode(data["args"]))
            return exc
    except Exception:
        pass
    return RecordedException(data["type"], data.get("message", ""))


class RecordedException(Exception):
    """Stands in for a recorded exception whose type cannot be imported where it is replayed."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name


_SIMPLE_DECODERS: dict[str, Any] = {
    "str": lambda v: v,
    "int": int,
    "float": float,
    "tuple": lambda v: tuple(decode(x) for x in v),
    "bytes": base64.b64decode,
    "set": lambda v: {decode(x) for x in v},
    "frozenset": lambda v: frozenset(decode(x) for x in v),
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "timedelta": lambda v: dt.timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
    "decimal": decimal.Decimal,
    "uuid": uuid.UUID,
}
