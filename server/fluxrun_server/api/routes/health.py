"""Liveness and readiness: is this node able to acknowledge bundles durably, and is indexing keeping up?

The node is unhealthy (503) when any check fails: its WAL cannot be trusted (an fsync failed), the disk is
full (the last WAL write ran out of space, or free space is under `health_min_free_bytes`), the database
does not answer, the aggregator's passes fail (the database or the object store is down), or the oldest
acknowledged record not yet indexed is older than `health_backlog_age_s` (indexing is stuck).

Anyone may ask (load balancers do) and sees which checks fail and the counters; error texts (which name
files, hosts and exceptions) are shown with a valid API key (`Authorization: Bearer fra_...`) only.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from fastapi import APIRouter, Header, HTTPException
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text

from fluxrun_server.api.deps import State
from fluxrun_server.auth import API_KEY, TokenError, check_token, token_prefix
from fluxrun_server.state import ServerState

router = APIRouter(tags=["health"])

PROBE_EVERY_S = 1.0  # the database is asked at most this often, however often /healthz is polled
_probes: dict[int, tuple[float, str | None]] = {}  # id(engine) -> (when, error or None)
_probe_lock = threading.Lock()


def _database_error(engine: Engine) -> str | None:
    now = time.monotonic()
    last = _probes.get(id(engine))
    if last is not None and now - last[0] < PROBE_EVERY_S:
        return last[1]
    with _probe_lock:
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            error = None
        except Exception as exc:
            first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]
            error = f"the database does not answer: {type(exc).__name__}: {first[:200]}"
        _probes[id(engine)] = (time.monotonic(), error)
    return error


def _disk_error(state: ServerState) -> str | None:
    if getattr(state.wal, "disk_full", False):
        return "the disk is full: the last WAL write ran out of space"
    try:
        stats = os.statvfs(state.settings.data_dir)
    except OSError as exc:
        return f"cannot read the data folder's disk: {exc}"
    free = stats.f_bavail * stats.f_frsize
    if free < state.settings.health_min_free_bytes:
        return f"the disk is nearly full: {free} bytes free, under {state.settings.health_min_free_bytes}"
    return None


def _backlog_error(state: ServerState) -> str | None:
    age = float(getattr(state.wal, "oldest_backlog_age_s", 0.0))
    limit = state.settings.health_backlog_age_s
    if age > limit:
        return f"indexing is stuck: the oldest record not yet indexed is {age:.0f} s old (limit {limit:.0f} s)"
    return None


def _may_see_details(state: ServerState, authorization: str) -> bool:
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value:
        return False
    try:
        token = check_token(value.strip(), API_KEY)
        return state.api_key(token, token_prefix(token)) is not None
    except (TokenError, HTTPException):  # malformed, or the database cannot say: no details
        return False


@router.get("/healthz", summary="Is this node able to acknowledge bundles durably, and is indexing keeping up?")
def health(state: State, authorization: str = Header("")) -> JSONResponse:
    wal = state.wal
    aggregator = state.aggregator
    errors: dict[str, str | None] = {
        "wal": None if wal.healthy else f"the WAL cannot be trusted: {wal.last_error}",
        "disk": _disk_error(state),
        "database": _database_error(state.engine),
        "aggregator": aggregator.last_error,
        "backlog": _backlog_error(state),
    }
    healthy = not any(errors.values())
    body: dict[str, Any] = {
        "status": "ok" if healthy else "unhealthy",
        "checks": {name: "failing" if error else "ok" for name, error in errors.items()},
        "wal": {
            "healthy": wal.healthy,
            "backlog_records": wal.backlog_records,
            "backlog_bytes": wal.backlog_bytes,
            "oldest_backlog_age_s": round(float(getattr(wal, "oldest_backlog_age_s", 0.0)), 1),
        },
        "aggregator": {
            "pid": aggregator.pid,
            "running": aggregator.ready,
            "stored": aggregator.stored,
            "duplicates": aggregator.duplicates,
            "quarantined": getattr(aggregator, "quarantined", 0),
        },
    }
    if _may_see_details(state, authorization):  # error texts: internal detail, for the operator only
        body["errors"] = {name: error for name, error in errors.items() if error}
        body["wal"]["last_error"] = str(wal.last_error) if wal.last_error else None
        body["aggregator"]["last_error"] = aggregator.last_error
        body["aggregator"]["failing_since"] = getattr(aggregator, "failing_since", None)
    return JSONResponse(body, status_code=200 if healthy else 503)
