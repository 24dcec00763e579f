"""Which entry point a bundle guard replays: rules the operator writes, one per line, first match wins.

    fluxrun_app =
        GET /orders/* = shop.asgi:app          # a glob on "METHOD route"
        /invoices/*   = mysite.wsgi:application  # on the route (or the path)
        jobs:*        = jobs:nightly           # on the entry point the bundle recorded
        mysite.wsgi:application                # no glob: every other bundle

The same rules work on the command line (`--fluxrun-app`, repeatable) and in `FLUXRUN_REPLAY_APP`
(rules separated by `;`). A bundle chooses nothing here: the rules only pick among the operator's entries.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

__all__ = ["entry_for", "rules"]


def rules(values: Any) -> list[tuple[str | None, str]]:
    """(glob or None, module:attr) pairs from ini lines, command-line values or an env value."""
    if not values:
        return []
    lines = [values] if isinstance(values, str) else list(values)
    out: list[tuple[str | None, str]] = []
    for line in lines:
        for part in str(line).replace(";", "\n").splitlines():
            text = part.split(" #", 1)[0].strip()
            if not text:
                continue
            glob, sep, entry = text.rpartition("=")
            out.append((glob.strip() or None, entry.strip()) if sep else (None, text))
    return out


def _keys(payload: dict[str, Any]) -> list[str]:
    request = payload.get("request") or {}
    method, route, path = request.get("method"), request.get("route"), request.get("path")
    keys = [str(k) for k in (route, path, payload.get("entry")) if k]
    if method:
        keys += [f"{method} {k}" for k in (route, path) if k]
    return keys


def entry_for(chosen: list[tuple[str | None, str]], payload: dict[str, Any]) -> str | None:
    """The first rule whose glob matches the bundle's route, "METHOD route", path or recorded entry; else the
    rule without a glob; else None."""
    keys = _keys(payload)
    for glob, entry in chosen:
        if glob is not None and any(fnmatchcase(k, glob) for k in keys):
            return entry
    return next((entry for glob, entry in chosen if glob is None), None)
