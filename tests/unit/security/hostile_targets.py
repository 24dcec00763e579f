"""Things a hostile bundle names. Each leaves a trace in `TRAIL` when any of its code runs, so a test can
prove that decoding a value or choosing an entry point ran nothing the bundle chose."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, model_validator

TRAIL: Path | None = None  # set by the test; every gadget writes its name here when it runs


def ran(what: str) -> None:
    if TRAIL is not None:
        with TRAIL.open("a") as out:
            out.write(what + "\n")


def gadget(*args: Any, **kwargs: Any) -> None:
    """A plain function: a bundle must never get to call it, as a type, an entry point or anything else."""
    ran("gadget")


class LoudNew:
    """A plain class whose constructor has effects: rebuilding one must not call it."""

    def __new__(cls, *args: Any) -> LoudNew:
        ran("LoudNew.__new__")
        return super().__new__(cls)

    def __init__(self, *args: Any) -> None:
        ran("LoudNew.__init__")


class LoudStr(str):
    """A str subclass whose constructor has effects."""

    def __new__(cls, value: str) -> LoudStr:
        ran("LoudStr.__new__")
        return super().__new__(cls, value)


class LoudError(Exception):
    """An exception whose constructor has effects."""

    def __init__(self, *args: Any) -> None:
        ran("LoudError.__init__")
        super().__init__(*args)


class LoudModel(BaseModel):
    """A pydantic model whose validator has effects."""

    name: str = ""

    @model_validator(mode="before")
    @classmethod
    def effect(cls, data: Any) -> Any:
        ran("LoudModel.validator")
        return data


class NotAModel:
    """Has a `model_validate`, but is no pydantic model."""

    @classmethod
    def model_validate(cls, data: Any) -> None:
        ran("NotAModel.model_validate")


class Color(enum.Enum):
    RED = "red"
