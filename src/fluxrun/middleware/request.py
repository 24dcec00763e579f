"""Where the app lives: the `module:attr` the middlewares record so replay can import the app again."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["find_entry"]

_entries: dict[int, str | None] = {}


def find_entry(app: Any) -> str | None:
    """The `module:attr` where the app lives (uvicorn's form), so replay can import it again."""
    key = id(app)
    if key in _entries:
        return _entries[key]
    found = None
    for name, module in list(sys.modules.items()):
        if module is None or name.startswith(("fluxrun", "_", "uvicorn", "starlette", "fastapi")):
            continue
        try:
            for attr, value in vars(module).items():
                if value is app and not attr.startswith("_"):
                    found = f"{name}:{attr}"
                    break
        except Exception:
            continue
        if found:
            break
    _entries[key] = found
    return found
