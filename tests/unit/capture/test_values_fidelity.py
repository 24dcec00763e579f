"""Values come back as they were (issue 14, item 5): a boundary's result and a captured function's arguments
are rebuilt at replay as instances of the same class with the same state, without running queries, `__init__`,
validators, properties or `__getattr__`; a value that cannot be rebuilt is named in the summary at capture; and
recording a value never runs the app's code (no property, lazy load or `__getattr__` fires because FluxRun
looked)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import threading
import uuid
import warnings
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import attrs
import pydantic
import pytest
import sqlalchemy
from sqlalchemy import orm

import fluxrun
from fluxrun.bundle import read_bundle


@pytest.fixture(autouse=True)
def in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLUXRUN_REPLAY_ISOLATE", "0")
    monkeypatch.delenv("FLUXRUN_REPLAY_APP", raising=False)


# -- the values ----------------------------------------------------------------------------------------------

CALLS: list[str] = []  # every __init__, validator, property or __getattr__ below appends here


@dataclasses.dataclass
class Plain:
    name: str
    tags: list[str]

    def __post_init__(self) -> None:
        CALLS.append("Plain.__post_init__")


@dataclasses.dataclass(frozen=True, slots=True)
class FrozenSlots:
    amount: decimal.Decimal
    currency: str = "EUR"

    def __post_init__(self) -> None:
        CALLS.append("FrozenSlots.__post_init__")


@dataclasses.dataclass(frozen=True)
class Frozen:
    when: dt.datetime
    inner: FrozenSlots


class Money(pydantic.BaseModel):
    amount: decimal.Decimal
    currency: str = "EUR"

    @pydantic.model_validator(mode="before")
    @classmethod
    def counted(cls, data: Any) -> Any:
        CALLS.append("Money validator")
        return data


class Order(pydantic.BaseModel):
    id: uuid.UUID
    total: Money
    note: str | None = None


@attrs.define
class Slotted:  # attrs.define makes a slots class
    x: int
    y: int = attrs.field(default=0)

    def __attrs_post_init__(self) -> None:
        CALLS.append("Slotted.__attrs_post_init__")


@attrs.frozen
class FrozenAttrs:
    label: str


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Perm(enum.Flag):
    R = 1
    W = 2


class Base(orm.DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    name: orm.Mapped[str]
    email: orm.Mapped[str | None]
    balance: orm.Mapped[decimal.Decimal] = orm.mapped_column(sqlalchemy.Numeric(10, 2))

    def __init__(self, **kwargs: Any) -> None:
        CALLS.append("User.__init__")
        super().__init__(**kwargs)


class Sneaky:
    """An app object whose every dynamic hook counts: recording it must not touch any of them."""

    def __init__(self) -> None:
        self.visible = 1

    @property
    def loud(self) -> int:
        CALLS.append("Sneaky.loud")
        raise RuntimeError("a property ran")

    def __getattr__(self, name: str) -> Any:
        CALLS.append(f"Sneaky.__getattr__({name})")
        raise AttributeError(name)

    def __repr__(self) -> str:
        CALLS.append("Sneaky.__repr__")
        return "Sneaky()"


ENGINE = sqlalchemy.create_engine("sqlite://")
QUERIES: list[str] = []
sqlalchemy.event.listen(ENGINE, "before_cursor_execute", lambda *a: QUERIES.append(a[2]))
Base.metadata.create_all(ENGINE)
with orm.Session(ENGINE) as _session:
    _session.add(User(id=7, name="Ada", email="ada@example.test", balance=decimal.Decimal("12.50")))
    _session.commit()


def load_user() -> User:
    with orm.Session(ENGINE) as session:
        user = session.get(User, 7)
        assert user is not None
        return user


PARIS = dt.datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=ZoneInfo("Europe/Paris"))

SAMPLES: dict[str, Any] = {
    "dataclass": lambda: Plain("a", ["x", "y"]),
    "frozen-slots": lambda: FrozenSlots(decimal.Decimal("1.10")),
    "frozen": lambda: Frozen(PARIS, FrozenSlots(decimal.Decimal("2"), "USD")),
    "pydantic": lambda: Order(id=uuid.UUID(int=5), total=Money(amount=decimal.Decimal("3.30"))),
    "attrs": lambda: Slotted(1, 2),
    "attrs-frozen": lambda: FrozenAttrs("f"),
    "enums": lambda: [Color.BLUE, Level.HIGH, Perm.R | Perm.W],
    "datetimes": lambda: [PARIS, dt.datetime(2024, 1, 1, tzinfo=dt.UTC), dt.datetime(2024, 1, 1, 5),
                          dt.date(2024, 2, 29), dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=-3)))],
    "decimal-uuid": lambda: [decimal.Decimal("-0.000"), decimal.Decimal("NaN"), uuid.UUID(int=9)],
    "orm": load_user,
}  # fmt: skip


def same_state(a: Any, b: Any) -> None:
    """Same class and same state, down to tzinfo classes and ORM column values."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            same_state(x, y)
    elif isinstance(a, Base):
        columns = [c.key for c in sqlalchemy.inspect(User).column_attrs]
        assert {k: getattr(a, k) for k in columns} == {k: getattr(b, k) for k in columns}
    elif isinstance(a, dt.datetime):
        seen = [(x, x.fold, type(x.tzinfo), x.tzname(), x.utcoffset()) for x in (a, b)]
        assert seen[0] == seen[1]
    elif isinstance(a, decimal.Decimal):
        assert str(a) == str(b)
    elif isinstance(a, pydantic.BaseModel):
        assert a == b and a.model_fields_set == b.model_fields_set
    else:
        assert a == b


# -- the app -------------------------------------------------------------------------------------------------

SEEN: list[Any] = []


@fluxrun.boundary("values.load")
def load(kind: str) -> Any:
    return SAMPLES[kind]()


@fluxrun.capture
def use_result(kind: str) -> None:
    SEEN.append(load(kind))
    raise LookupError(f"failed after loading {kind}")


@fluxrun.capture
def use_argument(value: Any) -> None:
    SEEN.append(value)
    raise LookupError("failed with the argument")


def capture_and_replay(captured, keys, call: Any, *args: Any) -> tuple[Any, Any, Any]:  # type: ignore[no-untyped-def]
    SEEN.clear()
    with pytest.raises(LookupError):
        call(*args)
    [path] = captured.files()
    recorded = SEEN.pop()
    CALLS.clear()
    QUERIES.clear()
    result = fluxrun.replay.run(path, keys.replay)
    assert result.outcome == "reproduced", result.summary()
    return recorded, SEEN.pop(), read_bundle(path.read_bytes()).summary


# -- tests ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(SAMPLES))
def test_a_boundary_result_comes_back_as_the_same_class_with_the_same_state(captured, keys, kind):
    recorded, replayed, summary = capture_and_replay(captured, keys, use_result, kind)
    same_state(recorded, replayed)
    assert replayed is not recorded
    assert CALLS == [] and QUERIES == []  # no __init__, validator, post-init or query ran at replay
    assert summary["replay_ready"] is True, summary.get("not_replay_ready")


@pytest.mark.parametrize("kind", ["dataclass", "frozen-slots", "pydantic", "attrs", "enums", "datetimes", "orm"])
def test_an_argument_comes_back_as_the_same_class_with_the_same_state(captured, keys, kind):
    value = SAMPLES[kind]()
    recorded, replayed, _ = capture_and_replay(captured, keys, use_argument, value)
    same_state(recorded, replayed)
    assert CALLS == [] and QUERIES == []


def test_an_orm_entity_is_usable_detached_without_a_session_or_a_query(captured, keys):
    _, user, _ = capture_and_replay(captured, keys, use_result, "orm")
    state = sqlalchemy.inspect(user)
    assert state.detached and state.identity == (7,)
    assert (user.id, user.name, user.email, user.balance) == (7, "Ada", "ada@example.test", decimal.Decimal("12.50"))
    user.name = "Grace"  # still an instrumented entity: changes are tracked
    assert state.attrs.name.history.added == ["Grace"]
    with orm.Session(ENGINE) as session:  # and it can join a session again, as a detached entity does
        session.add(user)
        assert sqlalchemy.inspect(user).persistent
    assert CALLS == []


def test_recording_an_app_object_runs_none_of_its_properties_getattr_or_repr(captured, keys):
    sneaky = Sneaky()
    CALLS.clear()
    with pytest.raises(LookupError):
        use_argument(sneaky)
    [path] = captured.files()
    assert CALLS == []  # nothing ran because FluxRun looked
    SEEN.clear()
    result = fluxrun.replay.run(path, keys.replay)
    assert result.outcome == "reproduced"
    rebuilt = SEEN.pop()
    assert type(rebuilt) is Sneaky and rebuilt.__dict__ == {"visible": 1}
    assert CALLS == []


def test_recording_pytests_mark_generator_fires_no_warning(captured):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(LookupError):
            use_argument(pytest.mark)
    assert [str(w.message) for w in caught] == []
    assert len(captured.files()) == 1


def unbuildable() -> Any:
    return threading.Lock()


@fluxrun.boundary("values.lock")
def load_lock() -> Any:
    return unbuildable()


@fluxrun.capture
def use_lock() -> None:
    load_lock()
    raise LookupError("failed with a lock")


def test_a_value_that_cannot_be_rebuilt_is_named_in_the_summary_at_capture(captured):
    with pytest.raises(LookupError):
        use_lock()
    [path] = captured.files()
    summary = read_bundle(path.read_bytes()).summary
    assert summary["replay_ready"] is False
    assert summary["not_replay_ready"] == [
        "the result of boundary values.lock is a _thread:lock that was recorded only as a description"
    ]


def test_a_class_defined_inside_a_function_is_named_in_the_summary(captured):
    @dataclasses.dataclass
    class Local:
        x: int

    with pytest.raises(LookupError):
        use_argument(Local(1))
    [path] = captured.files()
    summary = read_bundle(path.read_bytes()).summary
    assert summary["replay_ready"] is False
    [reason] = summary["not_replay_ready"]
    assert reason.startswith("argument 1 is a ") and "Local" in reason and "defined inside a function" in reason


def test_replay_ready_bundles_say_so(captured, tmp_path: Path):
    with pytest.raises(LookupError):
        use_result("dataclass")
    [path] = captured.files()
    summary = read_bundle(path.read_bytes()).summary
    assert summary["replay_ready"] is True and "not_replay_ready" not in summary
