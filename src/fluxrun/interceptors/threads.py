"""Carry the capture into threads the execution starts (`threading.Thread`, thread pools).

asyncio tasks, `asyncio.to_thread` and Starlette's thread pool copy the context already; plain
threads and `ThreadPoolExecutor` workers start with an empty one, so their IO would be lost.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fluxrun._context import current
from fluxrun.interceptors.base import Patch, wrap_method

__all__ = ["ThreadsInterceptor"]


def _start_wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if current() is not None:
        instance.run = functools.partial(contextvars.copy_context().run, instance.run)
    return wrapped(*args, **kwargs)


def _submit_wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if current() is not None and args:
        args = (functools.partial(contextvars.copy_context().run, args[0]), *args[1:])
    return wrapped(*args, **kwargs)


class ThreadsInterceptor:
    kind = "threads"

    def patches(self) -> list[Patch]:
        return [
            Patch(threading.Thread, "start", wrap_method(vars(threading.Thread)["start"], _start_wrapper)),
            Patch(ThreadPoolExecutor, "submit", wrap_method(vars(ThreadPoolExecutor)["submit"], _submit_wrapper)),
        ]

    def rebind(self) -> dict[int, Any]:
        return {}
