"""Where the app lives: the `module:attr` the middlewares record so replay can import the app again, and
the marks that let replay call a recorded entry point (a bundle may only name an entry FluxRun marked)."""

from __future__ import annotations

import inspect
import sys
from typing import Any

__all__ = ["ENTRY_MARK", "declare_entry", "find_entry", "is_marked_entry", "mark_entry"]

ENTRY_MARK = "__fluxrun_entry__"  # set to True on the function `@fluxrun.capture` returns

_entries: dict[tuple[int, ...], str | None] = {}
_marked: dict[int, Any] = {}  # id -> the object itself (kept alive, so an id cannot be reused)
_declared: set[str] = set()


def mark_entry(obj: Any) -> None:
    """Let replay call `obj` when a bundle names it: the middlewares mark the apps they wrap."""
    _marked[id(obj)] = obj


def declare_entry(entry: str) -> None:
    """An entry point the app's own code named (`FluxRunMiddleware(app, entry="myapp:app")`)."""
    _declared.add(entry)


def is_marked_entry(obj: Any, entry: str | None = None) -> bool:
    """True for what FluxRun marked as an entry point: a function `@fluxrun.capture` wraps, an app (or
    middleware) the FluxRun middleware wraps, an app that added the middleware with Starlette's
    `add_middleware`, or an entry the app's code declared. Read without calling anything on `obj`."""
    if _marked.get(id(obj)) is obj or (entry is not None and entry in _declared):
        return True
    if inspect.getattr_static(obj, ENTRY_MARK, None) is True:
        return True
    stack = inspect.getattr_static(obj, "user_middleware", None)  # Starlette and FastAPI build it lazily
    if isinstance(stack, list):
        from fluxrun.middleware.asgi import FluxRunMiddleware
        from fluxrun.middleware.wsgi import FluxRunWSGIMiddleware

        classes = [inspect.getattr_static(m, "cls", None) for m in stack]
        return any(c is FluxRunMiddleware or c is FluxRunWSGIMiddleware for c in classes)
    return False


_NOT_THE_APP = frozenset(  # top-level packages that hold no app of the user's: not scanned
    ("fluxrun", "pytest_fluxrun", "uvicorn", "gunicorn", "starlette", "fastapi", "litestar", "django", "flask")
)


def find_entry(*candidates: Any) -> str | None:
    """The `module:attr` where the app lives (uvicorn's form), so replay can import it again: the first of
    `candidates` (the middleware itself, the app it wraps...) that a module holds as an attribute."""
    wanted = [c for c in candidates if c is not None]
    key = tuple(id(c) for c in wanted)
    if key in _entries:
        return _entries[key]
    found: dict[int, str] = {}
    ids = set(key)
    for name, module in list(sys.modules.items()):
        if module is None or name.startswith("_") or name.partition(".")[0] in _NOT_THE_APP:
            continue
        try:
            for attr, value in list(vars(module).items()):
                if id(value) in ids and not attr.startswith("_") and id(value) not in found:
                    found[id(value)] = f"{name}:{attr}"
        except Exception:
            continue
        if key and key[0] in found:
            break
    entry = next((found[i] for i in key if i in found), None)
    _entries[key] = entry
    return entry
