"""A JSON-safe, round-trippable encoding of Python values for arguments, results and exceptions.

Plain JSON values stand for themselves. Everything else becomes a tagged object `{"$t": tag, ...}`
so replay can rebuild it: bytes, tuples, sets, datetimes (with their zone), decimals, UUIDs, enums,
exceptions, pydantic models, SQLAlchemy ORM entities, and other objects whose state is their `__dict__`
and `__slots__` (dataclasses, attrs classes, plain classes), rebuilt by type path without running `__init__`.
What cannot be rebuilt is kept as a description marked `"$t": "repr"`; `not_rebuildable` names those at
capture (the summary says the bundle is not replay-ready), and replay says so instead of guessing.

Recording never runs the app's code: an object's state is read through the `__dict__` and slot descriptors
its classes store (never `getattr`, so no property, `__getattr__` or lazy load fires), and an app's own
`__repr__` is never called.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import datetime as dt
import decimal
import enum
import math
import re
import sys
import types
import uuid
import zoneinfo
from typing import Any

from fluxrun.errors import FluxRunError
from fluxrun.model.type_paths import Refused, lookup, mro, namespace

__all__ = ["MAX_DEPTH", "RecordedException", "UnreplayableValue", "decode", "describe", "encode", "type_path"]

MAX_DEPTH = 24
_MAX_INT = 2**63 - 1
_TAG = "$t"


def type_path(tp: type) -> str:
    return f"{tp.__module__}:{tp.__qualname__}"


MAX_BYTES = 1 << 20  # strings and bytes longer than this are truncated (and marked) by default


def encode(value: Any, *, max_bytes: int = MAX_BYTES, _depth: int = 0, _trail: _Trail | None = None) -> Any:
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
        return [encode(v, max_bytes=max_bytes, _depth=depth, _trail=_trail) for v in value]
    if tp is dict:
        plain = _plain_dict(value, max_bytes)
        if plain:
            return value.copy()
        if plain is None:  # string keys, some value needs encoding
            return {k: encode(v, max_bytes=max_bytes, _depth=depth, _trail=_trail) for k, v in value.items()}
        return {
            _TAG: "dict",
            "v": [
                [
                    encode(k, max_bytes=max_bytes, _depth=depth, _trail=_trail),
                    encode(v, max_bytes=max_bytes, _depth=depth, _trail=_trail),
                ]
                for k, v in value.items()
            ],
        }
    if tp is tuple:
        return {_TAG: "tuple", "v": [encode(v, max_bytes=max_bytes, _depth=depth, _trail=_trail) for v in value]}
    if tp in (bytes, bytearray, memoryview):
        raw = bytes(value)
        out: dict[str, Any] = {_TAG: "bytes", "v": base64.b64encode(raw[:max_bytes]).decode()}
        if len(raw) > max_bytes:
            out.update(truncated=True, size=len(raw))
        return out
    if tp in (set, frozenset):
        items = [encode(v, max_bytes=max_bytes, _depth=depth, _trail=_trail) for v in value]
        with contextlib.suppress(Exception):  # ordered by their encoding: no app __repr__ runs
            items.sort(key=repr)
        return {_TAG: tp.__name__, "v": items}
    fast = _FAST.get(tp)
    if fast is not None:
        return fast(value)
    return _encode_other(value, tp, max_bytes, depth, _trail if _trail is not None else _Trail())


class _Trail:
    """The objects being encoded on the current path (a cycle is cut, not followed) and how many objects one
    value has taken so far (a huge object graph, such as a framework's config, is cut at `MAX_OBJECTS`)."""

    __slots__ = ("count", "path")

    def __init__(self) -> None:
        self.path: set[int] = set()
        self.count = 0


MAX_OBJECTS = 2000  # objects encoded through their state in one value; past that, a description


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


def _encode_datetime(value: dt.datetime) -> dict[str, Any]:
    out = {_TAG: "datetime", "v": value.isoformat()}
    zone = value.tzinfo
    if type(zone) is zoneinfo.ZoneInfo and zone.key:
        out["zone"] = zone.key  # an IANA zone: rebuilt as that zone, not as a fixed offset
    return out


# Exact types seen on hot paths (uuid4 results, datetime.now), checked before the isinstance chain.
_FAST: dict[type, Any] = {
    uuid.UUID: lambda v: {_TAG: "uuid", "v": str(v)},
    dt.datetime: _encode_datetime,
    dt.date: lambda v: {_TAG: "date", "v": v.isoformat()},
    decimal.Decimal: lambda v: {_TAG: "decimal", "v": str(v)},
}

_MISSING = object()
_GETSET = types.GetSetDescriptorType
_MEMBER = types.MemberDescriptorType
_BASE: Any = type.__dict__["__base__"]
_FLAGS: Any = type.__dict__["__flags__"]
_DISALLOW_INSTANTIATION = 1 << 7


def _stored(tp: type, name: str) -> Any:
    """`name` as the first class in `tp`'s MRO stores it: no metaclass hook, no descriptor bound."""
    for klass in mro(tp):
        own = namespace(klass)
        if name in own:
            return own[name]
    return _MISSING


def instance_dict(value: Any, tp: type) -> dict[str, Any] | None:
    """The instance's own `__dict__`, read through the descriptor its class stores (never a property).

    An exception's is read through `BaseException.__reduce__`, which does not make one: reading `__dict__`
    would, and then its class's `__reduce__` may pickle it differently (psycopg2's errors lose `pgcode`)."""
    if isinstance(value, BaseException):
        reduced = BaseException.__reduce__(value)
        state = reduced[2] if len(reduced) > 2 else None
        return state if type(state) is dict else None
    descriptor = _stored(tp, "__dict__")
    if type(descriptor) is not _GETSET:
        return None
    try:
        state = descriptor.__get__(value, tp)
    except Exception:
        return None
    return state if type(state) is dict else None


def slot_values(value: Any, tp: type) -> dict[str, Any]:
    """The values in the instance's `__slots__`, read through their member descriptors (unset ones left out)."""
    out: dict[str, Any] = {}
    for klass in mro(tp):
        for name, member in list(namespace(klass).items()):
            if type(member) is _MEMBER and name not in out:
                try:
                    out[name] = member.__get__(value, tp)
                except Exception:  # unset, or a descriptor borrowed from another class
                    continue
    return out


def plain_layout(cls: type) -> bool:
    """True when `object.__new__(cls)` makes an instance: every class on its base chain is plain Python code
    (a C base such as a socket or a lock keeps state replay cannot set). Decided without creating anything."""
    base: Any = cls
    while base is not None:
        if base is object:
            return not _FLAGS.__get__(cls) & _DISALLOW_INSTANTIATION
        new = namespace(base).get("__new__")
        if new is not None and type(new) is not staticmethod:
            return False  # a builtin __new__ other than object's: a C layout
        base = _BASE.__get__(base)
    return False


def _encode_other(value: Any, tp: type, max_bytes: int, depth: int, trail: _Trail) -> Any:
    classes = mro(tp)
    if dt.datetime in classes:
        return _encode_datetime(value)
    if dt.date in classes:
        return {_TAG: "date", "v": value.isoformat()}
    if dt.time in classes:
        return {_TAG: "time", "v": value.isoformat()}
    if dt.timedelta in classes:
        return {_TAG: "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    if decimal.Decimal in classes:
        return {_TAG: "decimal", "v": str(value)}
    if uuid.UUID in classes:
        return {_TAG: "uuid", "v": str(value)}
    if enum.Enum in classes:
        member = instance_dict(value, tp) or {}
        return {
            _TAG: "enum",
            "type": type_path(tp),
            "v": encode(member.get("_value_"), max_bytes=max_bytes, _depth=depth, _trail=trail),
        }
    if BaseException in classes:
        out: dict[str, Any] = {
            _TAG: "exception",
            "type": type_path(tp),
            "message": _safe_str(value),
            "args": encode(list(_ARGS.__get__(value)), max_bytes=max_bytes, _depth=depth, _trail=trail),
        }
        attributes = _plain_attributes(value, tp)
        if attributes:
            out["state"] = encode(attributes, max_bytes=max_bytes, _depth=depth, _trail=trail)
        return out
    for base in _BUILTIN_BASES:  # subclasses of builtins: keep the type, copy the builtin value (no app code)
        if base in classes:
            return {
                _TAG: "object",
                "type": type_path(tp),
                "base": encode(_BUILTIN_COPY[base](value), max_bytes=max_bytes, _depth=depth, _trail=trail),
            }
    if type in classes or callable(value) or not plain_layout(tp):
        return _described(value, tp)
    key = id(value)
    if key in trail.path:
        return {_TAG: "repr", "type": type_path(tp), "v": "<a reference back to an enclosing value>"}
    trail.count += 1
    if trail.count > MAX_OBJECTS:
        return {_TAG: "repr", "type": type_path(tp), "v": "<too large to record: part of a bigger object graph>"}
    trail.path.add(key)
    try:
        return _encode_state(value, tp, classes, max_bytes, depth, trail)
    finally:
        trail.path.discard(key)


def _encode_state(value: Any, tp: type, classes: tuple[type, ...], max_bytes: int, depth: int, trail: _Trail) -> Any:
    """An object of plain Python classes, as its state: a pydantic model, an ORM entity, or `__dict__` + slots."""
    manager = _orm_manager(tp)
    if manager is not None:
        entity = _orm_state(value, tp, manager)
        if entity is not None:
            return {
                _TAG: "orm",
                "type": type_path(tp),
                **encode(entity, max_bytes=max_bytes, _depth=depth, _trail=trail),
            }
    model_base = _pydantic_base()
    if model_base is not None and model_base in classes:
        model = _model_state(value, tp)
        if model is not None:
            return {
                _TAG: "model",
                "type": type_path(tp),
                **encode(model, max_bytes=max_bytes, _depth=depth, _trail=trail),
            }
    state = instance_dict(value, tp)
    slots = slot_values(value, tp)
    out: dict[str, Any] = {_TAG: "object", "type": type_path(tp)}
    out["state"] = encode(dict(state) if state else {}, max_bytes=max_bytes, _depth=depth, _trail=trail)
    if slots:
        out["slots"] = encode(slots, max_bytes=max_bytes, _depth=depth, _trail=trail)
    return out


def _described(value: Any, tp: type) -> dict[str, Any]:
    return {_TAG: "repr", "type": type_path(tp), "v": _safe_repr(value, tp)}


def _plain_attributes(exc: BaseException, tp: type) -> dict[str, Any]:
    """An exception's own attributes that are plain values (`self.code = code`), or small tables of them (a
    database error's diagnostics): replay sets them again without calling the exception's constructor. Richer
    attributes (a response, a request, a connection) are left out."""
    state = instance_dict(exc, tp)
    if not state:
        return {}
    out = {}
    for key, value in state.items():
        if type(key) is not str or key.startswith("__"):
            continue
        if value is None or type(value) in _SCALARS:
            out[key] = value
            continue
        table = _diagnostics(exc, value) if type(value) is not dict else value
        if type(table) is dict and len(table) <= _TABLE_MAX and _plain_table(table):
            out[key] = {int(k) if isinstance(k, int) else k: v for k, v in table.items() if v is not None}
    return out


_SCALARS = (str, int, float, bool)
_TABLE_MAX = 64


def _plain_table(table: dict[Any, Any]) -> bool:
    return all(
        isinstance(k, (str, int)) and (v is None or type(v) in _SCALARS or type(v) is bytes) for k, v in table.items()
    )


def _diagnostics(exc: BaseException, value: Any) -> Any:
    """A psycopg error's diagnostics (`exc.diag`), held as libpq's result: the table of its fields, as psycopg
    pickles it, so that `diag.constraint_name` and the rest answer at replay."""
    errors = sys.modules.get("psycopg.errors")
    error_class = getattr(errors, "Error", None)
    to_dict = getattr(errors, "_info_to_dict", None)
    if isinstance(error_class, type) and isinstance(exc, error_class) and callable(to_dict):
        try:
            return to_dict(value)
        except Exception:
            return None
    return None


def _pydantic_base() -> type | None:
    pydantic = sys.modules.get("pydantic.main")
    base = vars(pydantic).get("BaseModel") if pydantic is not None else None
    return base if isinstance(base, type) else None


def _model_state(value: Any, tp: type) -> dict[str, Any] | None:
    """A pydantic model's field values as they are (nested models stay models, so replay rebuilds each with
    its own class), which fields were set, and its extra and private attributes: read from its slots."""
    fields = instance_dict(value, tp)
    slots = slot_values(value, tp)
    fields_set = slots.get("__pydantic_fields_set__")
    if fields is None or not isinstance(fields_set, set):
        return None
    out: dict[str, Any] = {"v": dict(fields)}
    if fields_set != fields.keys():
        out["fields_set"] = sorted(k for k in fields_set if type(k) is str)
    for name, key in (("__pydantic_extra__", "extra"), ("__pydantic_private__", "private")):
        extra = slots.get(name)
        if type(extra) is dict and extra:
            out[key] = dict(extra)
    return out


def _orm_manager(tp: type) -> Any:
    """SQLAlchemy's class manager when `tp` is a mapped class (read from the class namespace), else None."""
    instrumentation = sys.modules.get("sqlalchemy.orm.instrumentation")
    if instrumentation is None:
        return None
    manager: Any = _stored(tp, "_sa_class_manager")
    manager_type = vars(instrumentation).get("ClassManager")
    if manager is _MISSING or not isinstance(manager_type, type) or type(manager) is not manager_type:
        return None
    found: Any = manager
    return found if found.class_ is tp else None


def _orm_state(value: Any, tp: type, manager: Any) -> dict[str, Any] | None:
    """A mapped instance's loaded column values (straight from its `__dict__`: nothing is loaded, refreshed or
    expired) and its identity key, so replay rebuilds a detached entity without a session or a query."""
    state_dict = instance_dict(value, tp)
    if state_dict is None:
        return None
    instance_state = state_dict.get("_sa_instance_state")
    columns = manager.mapper.column_attrs.keys()
    out: dict[str, Any] = {"v": {k: state_dict[k] for k in columns if k in state_dict}}
    key = getattr(instance_state, "key", None)  # SQLAlchemy's InstanceState: library code, not the app's
    if isinstance(key, tuple) and len(key) == 3 and isinstance(key[1], tuple):
        out["identity"] = list(key[1])
        if key[2] is not None:
            out["token"] = key[2]
    return out


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _safe_repr(value: object, tp: type) -> str:
    """A description that runs no app code: the repr of standard-library and builtin types (without memory
    addresses, so a replayed call compares equal), else just the type: an app's or library's own `__repr__`
    may load, query or fail, so it is never called."""
    owner = next((k for k in mro(tp) if "__repr__" in namespace(k)), object)
    module = str(namespace(owner).get("__module__") or "builtins").partition(".")[0]
    if owner is object or not (module == "builtins" or module in sys.stdlib_module_names):
        return f"<{type_path(tp)} object>"
    try:
        text = _ADDRESS.sub("", repr(value))
    except Exception:
        return f"<unprintable {tp.__name__}>"
    return text if len(text) <= 2000 else text[:2000] + "..."


class UnreplayableValue(FluxRunError):
    """The recording kept only a description of this value, or names a type replay may not rebuild."""


def _refused(data: dict[str, Any], why: str) -> UnreplayableValue:
    return UnreplayableValue(
        f"the recording holds a value of type {data.get('type')!r} ({data.get(_TAG)}) that replay does not "
        f"rebuild: {why}"
    )


def _class_of_kind(data: dict[str, Any], base: type, kind: str) -> Any:
    """The class the value's type path names, only if it is a class of the expected kind: else refused.
    Nothing the path names is called here (see `type_paths`)."""
    try:
        cls = lookup(data.get("type"))
    except Refused as exc:
        raise _refused(data, str(exc)) from None
    if not isinstance(cls, type) or base not in mro(cls):
        raise _refused(data, f"it is not {kind}")
    return cls


def decode(data: Any) -> Any:
    """Rebuild a value written by `encode`. Raises `UnreplayableValue` for values kept only as text and for
    types replay may not rebuild. A bundle is data: no constructor, validator or function it names is called."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    tag = data.get(_TAG)
    if tag is None:
        return {k: decode(v) for k, v in data.items()}
    v: Any = data.get("v")
    if tag == "datetime" and "zone" in data:
        return _rebuild_datetime(data)
    simple = _SIMPLE_DECODERS.get(tag)
    if simple is not None:
        return simple(v)
    if tag == "dict":
        return {decode(k): decode(val) for k, val in v}
    if tag == "enum":
        return _rebuild_enum(data, decode(v))
    if tag == "exception":
        return _rebuild_exception(data)
    if tag == "model":
        return _rebuild_model(data)
    if tag == "object":
        return _rebuild_object(data)
    if tag == "orm":
        return _rebuild_entity(data)
    raise UnreplayableValue(f"the recording kept only a description of a {data.get('type', tag)}: {v!r}")


def _rebuild_enum(data: dict[str, Any], value: Any) -> enum.Enum:
    cls = _class_of_kind(data, enum.Enum, "an Enum class")
    members: dict[Any, enum.Enum] = namespace(cls).get("_value2member_map_") or {}
    try:
        member = members.get(value)
    except TypeError:  # an unhashable value: the Enum's own lookup compares it with each member
        member = None
    if member is not None:
        return member
    try:
        return cls(value)  # type: ignore[no-any-return]  # an Enum lookup by value (Flag combinations), never a constructor the bundle chose
    except Exception as exc:
        raise _refused(data, f"{value!r} is not one of its values ({exc})") from None


def _rebuild_model(data: dict[str, Any]) -> Any:
    pydantic = sys.modules.get("pydantic")
    base = getattr(pydantic, "BaseModel", None)
    if not isinstance(base, type):
        raise _refused(data, "pydantic is not imported, so it cannot be a pydantic model")
    cls = _class_of_kind(data, base, "a pydantic model class")
    state = decode(data.get("v"))
    if not isinstance(state, dict):
        raise _refused(data, "its recorded fields are not a mapping")
    fields_set = data.get("fields_set")
    extra = decode(data.get("extra")) if "extra" in data else None
    private = decode(data.get("private")) if "private" in data else None
    model: Any = object.__new__(cls)  # no __init__, no validators: the recorded field values as they were
    _set = object.__setattr__
    _set(model, "__dict__", state)
    _set(model, "__pydantic_fields_set__", set(fields_set) if isinstance(fields_set, list) else set(state))
    _set(model, "__pydantic_extra__", extra if isinstance(extra, dict) else None)
    _set(model, "__pydantic_private__", private if isinstance(private, dict) else None)
    return model


_BUILTIN_BASES: tuple[type, ...] = (str, int, float, list, dict, tuple)
# The builtin value inside an instance of a builtin's subclass, copied by the builtin's own code (a subclass's
# __str__, __int__ or __iter__ does not run).
_BUILTIN_COPY: dict[type, Any] = {
    str: str.__str__,
    int: int.__int__,
    float: float.__float__,
    list: list.copy,
    dict: dict.copy,
    tuple: lambda v: tuple.__getitem__(v, slice(None)),
}


def _rebuild_object(data: dict[str, Any]) -> Any:
    if "base" in data:
        value = decode(data["base"])
        builtin = type(value)
        if builtin not in _BUILTIN_BASES:
            raise _refused(data, "its recorded base value is not a str, int, float, list, dict or tuple")
        cls = _class_of_kind(data, builtin, f"a subclass of {builtin.__name__}")
        obj: Any
        try:
            if builtin is list:
                obj = list.__new__(cls)
                list.extend(obj, value)
            elif builtin is dict:
                obj = dict.__new__(cls)
                dict.update(obj, value)
            else:  # the builtin's own constructor: the subclass's __new__ and __init__ do not run
                obj = builtin.__new__(cls, value)
        except Exception as exc:
            raise _refused(data, f"it cannot be rebuilt from its {builtin.__name__} value ({exc})") from None
        return obj
    cls = _class_of_kind(data, object, "a class")
    if enum.EnumMeta in mro(type(cls)):
        raise _refused(data, "it is an Enum, not a plain class")
    if not plain_layout(cls):
        raise _refused(data, "instances of it keep state in a C layout, so it is not a plain class")
    state = decode(data.get("state") or {})
    slots = decode(data.get("slots") or {})
    if not isinstance(state, dict) or not isinstance(slots, dict):
        raise _refused(data, "its recorded attributes are not a mapping")
    try:
        obj = object.__new__(cls)  # not cls.__new__: a class may run code there
        _set_state(obj, cls, state, slots)
    except Exception as exc:
        raise _refused(data, f"it is not a plain class with attributes ({type(exc).__name__}: {exc})") from None
    return obj


def _set_state(obj: Any, cls: type, state: dict[str, Any], slots: dict[str, Any]) -> None:
    """Put recorded attributes back through the `__dict__` and slot descriptors the class stores: no
    `__setattr__`, property or frozen-dataclass guard runs."""
    if state:
        own = instance_dict(obj, cls)
        if own is None:
            raise TypeError("its instances have no __dict__ to hold the recorded attributes")
        own.update(state)
    for name, value in slots.items():
        member = _stored(cls, name) if isinstance(name, str) else _MISSING
        if type(member) is not _MEMBER:
            raise TypeError(f"it has no slot {name!r}")
        member.__set__(obj, value)


def _rebuild_datetime(data: dict[str, Any]) -> dt.datetime:
    """The recorded instant in its IANA zone (a fixed offset would keep the time but lose the zone's rules)."""
    moment = dt.datetime.fromisoformat(data["v"])
    try:
        zone = zoneinfo.ZoneInfo(str(data["zone"]))
    except (ValueError, zoneinfo.ZoneInfoNotFoundError) as exc:
        raise _refused(
            {**data, "type": "datetime"}, f"its time zone {data['zone']!r} is unknown here ({exc})"
        ) from None
    return moment.astimezone(zone) if moment.tzinfo is not None else moment


def _rebuild_entity(data: dict[str, Any]) -> Any:
    """A SQLAlchemy ORM entity, detached, as SQLAlchemy's own unpickling restores one: a bare instance, a fresh
    instance state from the class's manager, the recorded column values and identity key. No session, no
    query, no `__init__`."""
    cls = _class_of_kind(data, object, "a class")
    manager = _orm_manager(cls)
    if manager is None:
        raise _refused(data, "it is not a mapped SQLAlchemy class here")
    if not plain_layout(cls):
        raise _refused(data, "instances of it keep state in a C layout")
    columns = decode(data.get("v") or {})
    if not isinstance(columns, dict):
        raise _refused(data, "its recorded columns are not a mapping")
    known = set(manager.mapper.column_attrs.keys())
    unknown = [k for k in columns if k not in known]
    if unknown:
        raise _refused(data, f"it has no mapped columns named {', '.join(map(str, unknown))}")
    try:
        obj = object.__new__(cls)
        state = manager._state_constructor(obj, manager)
        own = instance_dict(obj, cls)
        assert own is not None
        own["_sa_instance_state"] = state
        own.update(columns)
        identity = data.get("identity")
        if isinstance(identity, list):
            token = decode(data.get("token"))
            state.key = (manager.mapper._identity_class, tuple(decode(identity)), token)
            state.identity_token = token
    except Exception as exc:
        raise _refused(data, f"SQLAlchemy could not restore it ({type(exc).__name__}: {exc})") from None
    return obj


def _rebuild_exception(data: dict[str, Any]) -> BaseException:
    """The recorded exception, as its own class when replay may rebuild it (without calling its constructor:
    the builtin exception base creates it, then its args and recorded attributes are set), else a
    `RecordedException` that carries its type name and message."""
    try:
        cls = _class_of_kind(data, BaseException, "an exception class")
        args = tuple(decode(data.get("args") or []))
        new = next(namespace(c)["__new__"] for c in mro(cls) if c in _BUILTIN_EXCEPTIONS and "__new__" in namespace(c))
        exc: BaseException = new(cls, *args)
        builtin_init = next(
            namespace(c)["__init__"] for c in mro(cls) if c in _BUILTIN_EXCEPTIONS and "__init__" in namespace(c)
        )
        with contextlib.suppress(Exception):  # the builtin's own fields (UnicodeError's, OSError's errno), in C
            builtin_init(exc, *args)
        _ARGS.__set__(exc, args)
        state = data.get("state")
        if isinstance(state, dict):
            object.__getattribute__(exc, "__dict__").update(
                {k: decode(v) for k, v in state.items() if isinstance(k, str) and not k.startswith("__")}
            )
        return exc
    except Exception:
        return RecordedException(str(data.get("type")), str(data.get("message", "")))


_ARGS = BaseException.__dict__["args"]
_BUILTIN_EXCEPTIONS = frozenset(
    v for v in vars(builtins).values() if isinstance(v, type) and issubclass(v, BaseException)
)


class RecordedException(Exception):
    """Stands in for a recorded exception whose type replay cannot or may not rebuild where it is replayed."""

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


_SHOWN_AS_DECODED = ("str", "int", "float", "bytes", "datetime", "date", "time", "timedelta", "decimal", "uuid")


def describe(data: Any) -> str:
    """A readable rendering of an encoded value, made from the encoding alone: nothing is imported, no type
    it names is looked up, nothing is called. For `fluxrun bundle inspect`, which must never run app code."""
    if isinstance(data, list):
        return "[" + ", ".join(describe(v) for v in data) + "]"
    if not isinstance(data, dict):
        return repr(data)
    tag = data.get(_TAG)
    if tag is None:
        return "{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in data.items()) + "}"
    v: Any = data.get("v")
    kind = str(data.get("type", "?"))
    try:
        if tag in _SHOWN_AS_DECODED:  # standard-library values rebuilt from text: no path is resolved
            shown = repr(_SIMPLE_DECODERS[tag](v))
            return shown + (f" (truncated from {data.get('size')})" if data.get("truncated") else "")
        if tag == "tuple":
            return "(" + ", ".join(describe(x) for x in v) + ("," if len(v) == 1 else "") + ")"
        if tag in ("set", "frozenset"):
            inner = "{" + ", ".join(describe(x) for x in v) + "}"
            return inner if tag == "set" else f"frozenset({inner})"
        if tag == "dict":
            return "{" + ", ".join(f"{describe(k)}: {describe(val)}" for k, val in v) + "}"
        if tag == "enum":
            return f"<{kind} {describe(v)}>"
        if tag == "model":
            return f"<{kind} {describe(v)}>"
        if tag == "object":
            return f"<{kind} {describe(data['base'] if 'base' in data else data.get('state'))}>"
        if tag == "exception":
            return f"<{kind}: {data.get('message', '')}>"
        if tag == "repr":
            return f"<{kind} {v}>"
    except Exception:
        pass
    return repr(data)


_REBUILT_BY_TYPE = ("enum", "model", "object", "orm")


def _blocker(data: Any) -> tuple[str, str] | None:
    """The first value inside an encoding that replay cannot rebuild: (its type, why), or None. Read from the
    encoding alone, like `describe`: nothing is imported or looked up."""
    if isinstance(data, list):
        return next(filter(None, map(_blocker, data)), None)
    if not isinstance(data, dict):
        return None
    tag = data.get(_TAG)
    if tag is None:
        return next(filter(None, map(_blocker, data.values())), None)
    kind = str(data.get("type", tag))
    if tag == "repr":
        return kind, "that was recorded only as a description"
    if tag in _REBUILT_BY_TYPE:
        module, _, qualname = kind.partition(":")
        if "<locals>" in qualname:
            return kind, "defined inside a function, which replay cannot find"
        if module == "__main__":
            return kind, "defined in __main__ (the script that was run), which replay cannot import"
    if tag in ("tuple", "set", "frozenset", "dict", "enum", "model", "object", "orm"):
        inner = [data.get(k) for k in ("v", "state", "slots", "base", "extra", "private")]
        return next(filter(None, map(_blocker, inner)), None)
    return None


def not_rebuildable(payload: dict[str, Any]) -> list[str]:
    """Why replay could not rebuild the recorded values, in words ("the result of boundary db.load is a
    _thread:lock that was recorded only as a description"): the arguments, each recorded call's values, the
    return value. Found at capture, so the summary says it before anyone replays."""
    places: list[tuple[str, Any]] = []
    request = payload.get("request") or {}
    places += [(f"argument {i}", v) for i, v in enumerate(request.get("args") or [], start=1)]
    kwargs = request.get("kwargs")
    if isinstance(kwargs, dict):
        places += [(f"argument {k}", v) for k, v in kwargs.items() if k != _TAG]
    for event in payload.get("events") or []:
        data = event.get("data") or {}
        if event.get("kind") == "host":
            name = data.get("name") or event.get("call")
            places.append((f"an argument of boundary {name}", [data.get("args"), data.get("kwargs")]))
            places.append((f"the result of boundary {name}", data.get("result")))
        else:
            places.append(
                (f"a value of {event.get('kind')} event #{event.get('seq')}", data)
            )  # no call text: it may hold data
    outcome = payload.get("outcome") or {}
    if "value" in outcome:
        places.append(("the return value", outcome["value"]))
    reasons: list[str] = []
    for where, value in places:
        found = _blocker(value)
        if found is None:
            continue
        kind, why = found
        whole = isinstance(value, dict) and value.get(_TAG) in ("repr", *_REBUILT_BY_TYPE) and value.get("type") == kind
        reason = f"{where} {'is' if whole else 'holds'} a {kind} {why}"
        if reason not in reasons:
            reasons.append(reason)
    return reasons
