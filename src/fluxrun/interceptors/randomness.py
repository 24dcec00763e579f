"""Randomness: the `random` module's functions, `uuid.uuid1/uuid4`, `os.urandom` and `secrets`.

Instances the app makes itself (`random.Random(seed)`) are deterministic and left alone.
`random.shuffle` is recorded as the permutation it applied, so replay can apply the same one.
"""

from __future__ import annotations

import os
import random
import secrets
import uuid
from collections.abc import Callable, MutableSequence
from typing import Any

from fluxrun._context import current
from fluxrun._internal import real_urandom
from fluxrun.interceptors.base import Patch, serve_call, wrap
from fluxrun.interceptors.hot_path import record_call, value_patch
from fluxrun.model.schema import EventDict, ValueData
from fluxrun.model.values import decode, encode

__all__ = ["RandomnessInterceptor"]

KIND = "random"
RANDOM_FUNCTIONS = (
    "random", "uniform", "triangular", "randint", "randrange", "choice", "choices", "sample", "getrandbits",
    "randbytes", "gauss", "normalvariate", "lognormvariate", "expovariate", "vonmisesvariate",
    "gammavariate", "betavariate", "paretovariate", "weibullvariate",
)  # fmt: skip
SECRETS_FUNCTIONS = ("token_bytes", "token_hex", "token_urlsafe", "choice", "randbelow", "randbits")
_real_shuffle = random.shuffle


def _encoded(result: Any) -> dict[str, Any]:
    return {"value": encode(result)}


def _decoded(event: EventDict[ValueData]) -> Any:
    return decode(event["data"]["value"])


def _uuid4() -> uuid.UUID:
    """`uuid.uuid4` as the standard library writes it, reading the real `os.urandom`: no patched call
    inside, so a recorded uuid4 is one event with nothing to suspend."""
    return uuid.UUID(bytes=real_urandom(16), version=4)


def _io_wrapper(call: str) -> Callable[..., Any]:
    """For functions that read other patched sources (uuid1 reads the clock, `secrets` reads os.urandom),
    which must be suspended while they run; the others go through `value_patch`."""

    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        scope = current()
        if scope is None:
            return wrapped(*args, **kwargs)
        if scope.session is not None:
            return serve_call(scope, KIND, call, wrapped, args, kwargs, _decoded)
        return record_call(scope, KIND, call, wrapped, args, kwargs, _encoded)

    return wrapper


def _shuffle_in_place(x: MutableSequence[Any]) -> list[int]:
    """Shuffle `x` exactly as `random.shuffle` would (same draws) and return the permutation used."""
    order = list(range(len(x)))
    _real_shuffle(order)
    items = [x[i] for i in order]
    for position, item in enumerate(items):
        x[position] = item
    return order


def _shuffle_wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    scope = current()
    if scope is None or kwargs or len(args) != 1:
        return wrapped(*args, **kwargs)
    if scope.session is not None:
        target = args[0]

        def apply(event: EventDict[ValueData]) -> None:
            items = [target[i] for i in event["data"]["permutation"]]
            for position, item in enumerate(items):
                target[position] = item

        return serve_call(scope, KIND, "random.shuffle", wrapped, args, {}, apply)
    holder: dict[str, list[int]] = {}

    def shuffle(x: MutableSequence[Any]) -> None:
        holder["order"] = _shuffle_in_place(x)

    return record_call(scope, KIND, "random.shuffle", shuffle, args, {}, lambda _: {"permutation": holder["order"]})


class RandomnessInterceptor:
    kind = KIND

    def __init__(self) -> None:
        self._targets: list[tuple[Any, str, Any]] = []
        for name in RANDOM_FUNCTIONS:
            if hasattr(random, name):
                self._value(random, name)
        self._add(random, "shuffle", _shuffle_wrapper)
        self._add(uuid, "uuid1", _io_wrapper("uuid.uuid1"))
        self._value(uuid, "uuid4", keywords=False, run=_uuid4)
        self._value(os, "urandom", keywords=False)
        for name in SECRETS_FUNCTIONS:
            self._add(secrets, name, _io_wrapper(f"secrets.{name}"))

    def _value(self, owner: Any, name: str, *, keywords: bool = True, run: Callable[..., Any] | None = None) -> None:
        original, call = getattr(owner, name), f"{owner.__name__}.{name}"
        patched = value_patch(original, KIND, call, _decoded, encoded=True, keywords=keywords, run=run)
        self._targets.append((owner, name, patched))

    def _add(self, owner: Any, name: str, wrapper: Callable[..., Any]) -> None:
        self._targets.append((owner, name, wrap(getattr(owner, name), wrapper)))

    def patches(self) -> list[Patch]:
        return [Patch(owner, name, replacement) for owner, name, replacement in self._targets]

    def rebind(self) -> dict[int, Any]:
        return {id(replacement.__wrapped__): replacement for _, _, replacement in self._targets}
