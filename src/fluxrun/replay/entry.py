"""Which entry point a replay calls: one the operator names, or one the bundle names that FluxRun marked.

A bundle is data, signed by whoever holds a capture key, so the `module:attr` it records is never trusted on
its own. The operator's choice wins: `app=` on `fluxrun.replay.run` (or the `@fluxrun.replay` marker), `--app`
on the command line, `FLUXRUN_REPLAY_APP`, or `fluxrun_app`/`--fluxrun-app` in pytest. Without one, the
recorded entry is used only if it is an object `@fluxrun.capture` or the FluxRun middleware marked, found
through `type_paths` (an already-imported module or the app's own code, looked up without running anything).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from fluxrun.errors import FluxRunError
from fluxrun.middleware.request import is_marked_entry
from fluxrun.model.type_paths import Refused, lookup, split

__all__ = ["ENV", "choose_entry", "import_entry"]

ENV = "FLUXRUN_REPLAY_APP"

HOW_TO_ALLOW = (
    "To replay it against your app, name the entry point yourself: app=... in fluxrun.replay.run or "
    "@fluxrun.replay, --app module:attr with `fluxrun replay`, FLUXRUN_REPLAY_APP=module:attr, or in pytest "
    "--fluxrun-app module:attr (ini fluxrun_app)."
)


def _project_on_path() -> None:
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # uvicorn resolves `module:app` from the working directory too


def import_entry(entry: str) -> Any:
    """The entry point the operator named (`module:attr`), imported as uvicorn would."""
    module_name, _, attr = entry.partition(":")
    if not module_name or not attr:
        raise FluxRunError(f"entry point {entry!r} is not in the form module:attribute")
    _project_on_path()
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise FluxRunError(
            f"cannot import {module_name!r} to replay {entry}: {exc}. Run from the app's project folder, "
            "or pass the app explicitly (app=... / --app module:attr)"
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise FluxRunError(f"{module_name} has no attribute {attr!r} to replay (entry {entry})") from None
    return obj


def _recorded_entry(entry: object) -> Any:
    """The bundle's entry point, only if FluxRun marked it as one; else a `FluxRunError` saying how to allow it."""
    _project_on_path()
    try:
        module_name, qualname = split(entry)
        found = lookup(entry)
    except Refused as exc:
        raise FluxRunError(
            f"replay refuses the entry point {entry!r} the bundle names: {exc}. {HOW_TO_ALLOW}"
        ) from None
    if not is_marked_entry(found, str(entry)):
        raise FluxRunError(
            f"replay refuses the entry point {entry!r} the bundle names: it is not a function @fluxrun.capture "
            f"wraps or an app the FluxRun middleware wraps, and a bundle may not choose what replay calls. "
            f"{HOW_TO_ALLOW}"
        )
    if "." not in qualname:
        return found
    obj: Any = sys.modules[module_name]  # a marked method: bind it as `module.Class.method` reads
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def choose_entry(app: Any, payload: dict[str, Any]) -> tuple[Any, str | None]:
    """The object to replay and the entry name to report: the operator's `app` (or `FLUXRUN_REPLAY_APP`),
    else the bundle's recorded entry if FluxRun marked it."""
    recorded = payload.get("entry")
    if app is None:
        app = os.environ.get(ENV) or None
    if app is not None:
        return (import_entry(app), app) if isinstance(app, str) else (app, recorded)
    if recorded is None:
        raise FluxRunError(f"the bundle names no entry point to replay. {HOW_TO_ALLOW}")
    return _recorded_entry(recorded), str(recorded)
