"""The seam every interceptor shares: patches as (owner, attribute, replacement) triples.

`Patcher.apply` and `Patcher.restore` mirror each other exactly, so `fluxrun.shutdown()` leaves
every module and class as it found it. The wrappers (`wrap`, `wrap_method`, `wrap_client_method`)
read the context variable and call straight through outside an execution; what a recorded call then
costs is in hot_path.py. `serve_call` is the replay side of a value-returning call.
"""

from __future__ import annotations

import functools
import inspect
import keyword
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from sys import _getframe
from types import MethodType
from typing import Any, Protocol

import wrapt

from fluxrun._context import Scope, current
from fluxrun._internal import (
    LIBRARY,
    PACKAGE,
    caller_frame,
    reader,
    report_internal_error,
    site_of,
)
from fluxrun._replay_mode import replaying_here
from fluxrun.model.schema import AnyEvent

__all__ = [
    "Interceptor",
    "Patch",
    "Patcher",
    "wrap",
    "wrap_client_method",
    "wrap_method",
]

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]

_MISSING = object()


@dataclass(frozen=True)
class Patch:
    owner: Any
    attribute: str
    replacement: Any


class Interceptor(Protocol):
    """An IO kind's patches. `rebind` maps originals to replacements for `from x import y` in app code."""

    kind: str

    def patches(self) -> list[Patch]: ...

    def rebind(self) -> dict[int, Any]: ...


class Patcher:
    """Applies patches and restores exactly what was there before (including "nothing")."""

    def __init__(self) -> None:
        self._applied: list[tuple[Any, str, Any]] = []

    def apply(self, patch: Patch) -> None:
        owner, name = patch.owner, patch.attribute
        if isinstance(owner, type):
            before = vars(owner).get(name, _MISSING)  # restore the class's own attribute, not an inherited one
        else:
            before = getattr(owner, name, _MISSING)
        setattr(owner, name, patch.replacement)
        self._applied.append((owner, name, before))

    def restore(self) -> None:
        while self._applied:
            owner, name, before = self._applied.pop()
            try:
                if before is _MISSING:
                    delattr(owner, name)
                else:
                    setattr(owner, name, before)
            except Exception as exc:  # pragma: no cover - an app replaced the attribute itself
                report_internal_error(f"restoring {name}", exc)

    def __len__(self) -> int:
        return len(self._applied)


def wrap(original: Any, wrapper: Wrapper) -> Any:
    """A replacement for a module-level function that calls `wrapper(wrapped, instance, args, kwargs)`.

    A closure for synchronous functions, builtins included: cheaper per idle call than wrapt's C
    `FunctionWrapper` around a builtin, and far cheaper than one around a Python function.
    Coroutine functions keep wrapt's wrapper, which `inspect.iscoroutinefunction` still recognises.
    """
    if inspect.iscoroutinefunction(original):
        return wrapt.FunctionWrapper(original, wrapper)

    @functools.wraps(original)
    def patched(*args: Any, **kwargs: Any) -> Any:
        if current() is None:
            return original(*args, **kwargs)
        return wrapper(original, None, args, kwargs)

    return patched


def wrap_method(original: Callable[..., Any], wrapper: Wrapper) -> Callable[..., Any]:
    """A replacement for a method set on a class (`_Environ.__getitem__`, `Logger.handle`).

    A plain function binds through CPython's fast path; a wrapt wrapper on a class builds a bound
    wrapper object on every call, which env reads cannot afford.
    """

    @functools.wraps(original)
    def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
        if current() is None:
            return original(self, *args, **kwargs)
        return wrapper(types.MethodType(original, self), self, args, kwargs)

    return patched


def wrap_client_method(original: Callable[..., Any], wrapper: Wrapper) -> Callable[..., Any]:
    """A client method's replacement (`HTTPAdapter.send`, `Redis.execute_command`): a plain function with
    the original's own parameters that reads the context variable and, outside a capture or replay, calls
    the original straight through with them.

    The idle path is the one that must cost nothing. A wrapt wrapper on a class builds a bound wrapper object
    and calls a Python wrapper on every call, and a `(*args, **kwargs)` function forwards through CPython's
    slow generic call; a function with the original's signature passes its arguments on as an ordinary call
    (f3f076b's message gives the instructions of each). Past `KEYWORD_ONLY_SPELLED_OUT` keyword-only
    parameters, those are collected in one dict and passed on as they came. Inside an execution,
    `wrapper(bound original, instance, args, kwargs)` runs, wrapt-style, with every positional parameter in
    `args` and the keyword-only ones the caller passed (all of them, when spelled out) in `kwargs`. A
    coroutine function's replacement returns the original's coroutine (or the wrapper's awaitable) and is
    marked so `asyncio.iscoroutinefunction` still says so. A method taking `(self, *args, **kwargs)` gets
    `BoundWhenActive` instead, which picks the original or the wrapper's way in when looked up.
    """
    if isinstance(original, types.FunctionType):
        code = original.__code__  # `(self, *args, **kwargs)` and nothing else
        if code.co_flags & inspect.CO_VARARGS and code.co_argcount == 1 and not code.co_kwonlyargcount:
            return _same_hand_over(original, wrapper) or BoundWhenActive(original, wrapper)
    patched = _same_signature(original, wrapper)
    if patched is None:  # not a plain Python function (a builtin, a C method): the generic form
        patched = wrap_method(original, wrapper)
    else:
        functools.update_wrapper(patched, original)
    if inspect.iscoroutinefunction(original):
        _mark_coroutine_function(patched)
    return patched


class BoundWhenActive:
    """A `*args` client method's replacement (`Redis.execute_command(self, *args, **options)`): looked up
    outside an execution it is the original method itself, inside one a function that hands the wrapper the
    `args` and `kwargs` the call came with (so only for methods taking `(self, *args, **kwargs)`, or for a
    wrapper that takes them as they came: aiohttp's `ClientSession._request`).

    A function in between would gather `*args` and `**options` into a new tuple and dict and spread them again
    for the original, a generic call on every idle command (redis GET: +3,900 instructions); the choice at
    lookup costs one small Python call and no repacking. Looked up on the class it is a plain function too
    (the original, or the way in, which carries the original's name and signature)."""

    __slots__ = ("__dict__", "_original", "_recording")

    def __init__(self, original: types.FunctionType, wrapper: Wrapper) -> None:
        functools.update_wrapper(self, original)
        self._original = original

        def recording(instance: Any, *args: Any, **kwargs: Any) -> Any:
            return wrapper(MethodType(original, instance), instance, args, kwargs)

        functools.update_wrapper(recording, original)
        if inspect.iscoroutinefunction(original):
            _mark_coroutine_function(recording)
        self._recording = recording

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self._original if current() is None else self._recording
        return MethodType(self._original if current() is None else self._recording, instance)

    def __call__(self, instance: Any, *args: Any, **kwargs: Any) -> Any:
        return self.__get__(instance)(*args, **kwargs)


def _same_hand_over(original: types.FunctionType, wrapper: Wrapper) -> Callable[..., Any] | None:
    """The replacement of a `(self, *args, **kwargs)` method whose whole body hands its arguments on to
    another method (`return self._execute_command(*args, **options)`: redis-py's `Redis.execute_command`
    in 8.2), or None for any other body. It does the same hand-over after one look at the context
    variable, so an idle call runs exactly the frames it ran before (`BoundWhenActive` costs one Python
    call at every lookup). The body is recognised by compiling that one line with the original's names
    and comparing the bytecode."""
    code = original.__code__
    if not code.co_flags & inspect.CO_VARKEYWORDS or len(code.co_names) != 1 or code.co_freevars:
        return None
    self_name, star, double_star = code.co_varnames[:3]
    target = code.co_names[0]
    if not all(_plain_name(name) for name in (self_name, star, double_star, target)):
        return None
    hand_over = f"return {self_name}.{target}(*{star}, **{double_star})"
    shape: dict[str, Any] = {}
    exec(compile(f"def shape({self_name}, *{star}, **{double_star}):\n    {hand_over}\n", __file__, "exec"), shape)
    if shape["shape"].__code__.co_code != code.co_code or shape["shape"].__code__.co_varnames != code.co_varnames:
        return None
    patched = _compiled(
        original,
        wrapper,
        f"{self_name}, *{star}, **{double_star}",
        f"            {hand_over}\n",
        self_name,
        f"{star}, {double_star}",
    )
    functools.update_wrapper(patched, original)
    return patched


def _compiled(
    original: Any, wrapper: Wrapper, params: str, idle: str, self_name: str, passed: str
) -> Callable[..., Any]:
    """A replacement compiled from source, `def patched(<params>)`: outside an execution its `idle` lines (which
    return), inside one `wrapper(bound original, <self_name>, <passed>)`. Every name in the source was checked
    by the caller (`_plain_name`)."""
    source = (
        "def _fluxrun_make(_fluxrun_original, _fluxrun_current, _fluxrun_wrapper, _fluxrun_bind):\n"
        f"    def patched({params}):\n"
        "        if _fluxrun_current() is None:\n"
        f"{idle}"
        f"        return _fluxrun_wrapper(_fluxrun_bind(_fluxrun_original, {self_name}), {self_name}, {passed})\n"
        "    return patched\n"
    )
    namespace: dict[str, Any] = {"__name__": __name__}
    exec(compile(source, __file__, "exec"), namespace)  # this file's name: frame walks skip it as FluxRun's
    made: Callable[..., Any] = namespace["_fluxrun_make"](original, current, wrapper, types.MethodType)
    return made


def _plain_name(name: str) -> bool:
    """A name that can be written into generated source as it is (and is not one of FluxRun's own)."""
    return name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("_fluxrun_")


KEYWORD_ONLY_SPELLED_OUT = 4  # past this many keyword-only parameters, `_same_signature` forwards a dict


def _same_signature(original: Any, wrapper: Wrapper) -> Callable[..., Any] | None:
    """The idle-fast replacement of `wrap_client_method`, compiled with `original`'s parameters and defaults
    (the defaults are the original's own objects). None when `original` has no Python code to copy."""
    code = getattr(original, "__code__", None)
    if not isinstance(code, types.CodeType) or code.co_argcount < 1 or not isinstance(original, types.FunctionType):
        return None
    flags, positional, keyword_only = code.co_flags, code.co_argcount, code.co_kwonlyargcount
    names = list(code.co_varnames[: positional + keyword_only])
    rest = code.co_varnames[positional + keyword_only :]
    star = rest[0] if flags & inspect.CO_VARARGS else None
    double_star = rest[1 if star else 0] if flags & inspect.CO_VARKEYWORDS else None
    if not all(_plain_name(name) for name in (*names, star, double_star) if name):
        return None
    params, call, args, kwargs = [], [], [], []
    for i, name in enumerate(names[:positional]):
        params.append(name)
        if i + 1 == code.co_posonlyargcount:
            params.append("/")
        call.append(name)
        if i:
            args.append(name)
    if star:
        params.append(f"*{star}")
        call.append(f"*{star}")
        args.append(f"*{star}")
    if keyword_only > KEYWORD_ONLY_SPELLED_OUT:
        # many keyword-only parameters (aiohttp's `_request` has 31): collected in one dict and passed on
        # as it came, since spelling them out costs a default to fill and a keyword to match again for each
        # one on every call, where the dict costs only the keywords the caller passed
        double_star = double_star or "_fluxrun_keywords"
    else:
        if keyword_only and not star:
            params.append("*")
        for name in names[positional:]:
            params.append(name)
            call.append(f"{name}={name}")
            kwargs.append(f"{name!r}: {name}")
    if double_star:
        params.append(f"**{double_star}")
        call.append(f"**{double_star}")
        kwargs.append(f"**{double_star}")
    self_name = names[0]
    idle = f"            return _fluxrun_original({', '.join(call)})\n"
    if double_star and not star:
        # `f(**{})` takes CPython's generic call (a tuple of every argument, a copy of the dict); without the
        # `**` it is an ordinary call: about 750 instructions less on urllib3's `urlopen`, which nearly
        # always comes with no extra keywords
        idle = (
            f"            if not {double_star}:\n"
            f"                return _fluxrun_original({', '.join(call[:-1])})\n"
            f"{idle}"
        )
    passed = f"({''.join(a + ', ' for a in args)}), {{{', '.join(kwargs)}}}"
    patched = _compiled(original, wrapper, ", ".join(params), idle, self_name, passed)
    patched.__defaults__ = original.__defaults__
    if keyword_only <= KEYWORD_ONLY_SPELLED_OUT:
        patched.__kwdefaults__ = original.__kwdefaults__
    return patched


def _mark_coroutine_function(function: Callable[..., Any]) -> None:
    mark = getattr(inspect, "markcoroutinefunction", None)  # Python 3.12+
    if mark is not None:
        mark(function)
    else:
        import asyncio.coroutines

        function._is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]


def skipped_while_replaying(original: Callable[..., Any]) -> Callable[..., Any]:
    """`original` (a method, sync or async) made a no-op while a replay runs in this process: a pool's own
    connecting, refilling and waiting for connections, which a replay answers from the recording instead."""
    if inspect.iscoroutinefunction(original):

        @functools.wraps(original)
        async def skipped_async(*args: Any, **kwargs: Any) -> Any:
            return None if replaying_here() else await original(*args, **kwargs)

        return skipped_async

    @functools.wraps(original)
    def skipped(*args: Any, **kwargs: Any) -> Any:
        return None if replaying_here() else original(*args, **kwargs)

    return skipped


def loaded(module: str) -> Any:
    """The module if the app has imported its package (a submodule is imported then), else None: FluxRun
    never imports a library the app does not use (its interceptor is built when the app imports it)."""
    mod = sys.modules.get(module)
    if mod is not None:
        return mod
    top = module.partition(".")[0]
    if top not in sys.modules and top not in sys.stdlib_module_names:
        return None
    import importlib.util

    try:
        if importlib.util.find_spec(module) is None:
            return None
        return importlib.import_module(module)
    except Exception:
        return None


def serve_call(
    scope: Scope,
    kind: str,
    call: str,
    wrapped: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    answer: Callable[[AnyEvent], Any],
    *,
    depth: int = 3,
    live: Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any] | None = None,
) -> Any:
    """The replay side of `record_call`: answer from the recording; the real function does not run.

    The standard library's machinery keeps the real functions at replay as at capture (so asyncio's clock
    stays real and awaiting code never hangs). An installed package's read is answered from its own
    stream, and by `live` (default: the real call) once that stream has nothing left.
    """
    frame = caller_frame(depth)
    # who reads, judged from the call itself as capture judges it (app_site): a read inside an intercepted
    # client's own code (httpx timing a request to an in-process app) is the client's, not the app line above
    who = reader(_getframe(depth - 1)) if frame is not None else LIBRARY
    if frame is None or who == LIBRARY:
        return live(wrapped, args, kwargs) if live is not None else wrapped(*args, **kwargs)
    here = scope.here()
    site = site_of(frame)
    assert here.session is not None
    if who == PACKAGE:
        found = here.session.take_if_recorded(kind, call, here.path, site)
        if found is None:
            return live(wrapped, args, kwargs) if live is not None else wrapped(*args, **kwargs)
        event = found
    else:
        event = here.session.take(kind, call, here.path, frame, site)
    here.recording.add(kind, call, here.path, site, {})
    raise_recorded_error(event)
    return answer(event)


def raise_recorded_error(event: Mapping[str, Any]) -> None:
    """Raise the exception a recorded call raised, rebuilt from the recording."""
    error = event.get("error")
    if error is None:
        return
    from fluxrun.model.values import RecordedException, decode

    try:
        exc = decode(error["exception"])
    except Exception:
        exc = RecordedException(error.get("type", "?"), error.get("message", ""))
    raise exc
