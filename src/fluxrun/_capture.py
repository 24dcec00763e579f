"""`@fluxrun.capture`: capture each call of a sync or async function as one execution."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, cast, overload

import wrapt

from fluxrun._client import Client, begin, end
from fluxrun._internal import report_internal_error
from fluxrun.middleware.request import ENTRY_MARK, mark_entry
from fluxrun.model.outcome import describe_exception
from fluxrun.model.recording import Recording
from fluxrun.model.values import encode

__all__ = ["capture", "record_error", "record_return"]

F = TypeVar("F", bound=Callable[..., Any])


def record_error(client: Client, recording: Recording, exc: BaseException) -> None:
    try:
        recording.outcome = {
            "kind": "error",
            "error": describe_exception(exc, client.in_app, max_bytes=client.options.max_body_size),
            **({"status": recording.outcome["status"]} if "status" in recording.outcome else {}),
        }
    except Exception as internal:
        report_internal_error("recording an exception", internal)


def record_return(client: Client, recording: Recording, value: Any) -> None:
    try:
        recording.outcome = {"kind": "ok", "value": encode(value, max_bytes=client.options.max_body_size)}
    except Exception as internal:
        report_internal_error("recording a return value", internal)


def _request(client: Client, recording: Recording, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    try:
        limit = client.options.max_body_size
        recording.request = {
            "args": encode(list(args), max_bytes=limit),
            "kwargs": encode(kwargs, max_bytes=limit),
        }
    except Exception as exc:
        report_internal_error("recording arguments", exc)


def _marked(wrapped: Any) -> Any:
    """Mark the captured function as an entry point replay may call when a bundle names it (the attribute
    reaches methods read through the class too; the registry covers callables that take no attributes)."""
    mark_entry(wrapped)
    with contextlib.suppress(AttributeError, TypeError):
        setattr(wrapped, ENTRY_MARK, True)
    return wrapped


@overload
def capture(func: F, /) -> F: ...
@overload
def capture(*, name: str | None = None) -> Callable[[F], F]: ...


def capture(func: Any = None, /, *, name: str | None = None) -> Any:
    """Capture every call of the decorated function (sync or async) as an execution.

    Use bare (`@fluxrun.capture`) or with a name (`@fluxrun.capture(name="nightly-sync")`). The
    arguments are recorded so replay can call the function again with them.
    """

    def decorate(function: F) -> F:
        entry = f"{function.__module__}:{function.__qualname__}"
        label = name or entry

        if inspect.iscoroutinefunction(function):

            async def run_async(wrapped: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                started = begin("function", entry)
                if started is None:
                    return await wrapped(*args, **kwargs)
                client, recording, _ = started
                _request(client, recording, args, kwargs)
                recording.request["route"] = label
                try:
                    result = await wrapped(*args, **kwargs)
                except BaseException as exc:
                    record_error(client, recording, exc)
                    end(started)
                    raise
                record_return(client, recording, result)
                end(started)
                return result

            def async_wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
                return run_async(wrapped, args, kwargs)

            return cast(F, _marked(wrapt.FunctionWrapper(function, async_wrapper)))

        def wrapper(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
            started = begin("function", entry)
            if started is None:
                return wrapped(*args, **kwargs)
            client, recording, _ = started
            _request(client, recording, args, kwargs)
            recording.request["route"] = label
            try:
                result = wrapped(*args, **kwargs)
            except BaseException as exc:
                record_error(client, recording, exc)
                end(started)
                raise
            record_return(client, recording, result)
            end(started)
            return result

        return cast(F, _marked(wrapt.FunctionWrapper(function, wrapper)))

    if func is not None:
        return decorate(func)
    return decorate
