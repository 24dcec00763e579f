"""Liveness and readiness: the node is unhealthy once its WAL cannot be trusted (an fsync failed)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from fluxrun_server.api.deps import State

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Is this node able to acknowledge bundles durably?")
def health(state: State) -> JSONResponse:
    wal = state.wal
    body: dict[str, Any] = {
        "status": "ok" if wal.healthy else "unhealthy",
        "wal": {
            "healthy": wal.healthy,
            "last_error": str(wal.last_error) if wal.last_error else None,
            "backlog_records": wal.backlog_records,
            "backlog_bytes": wal.backlog_bytes,
        },
        "aggregator": {
            "pid": state.aggregator.pid,
            "running": state.aggregator.ready,
            "stored": state.aggregator.stored,
            "duplicates": state.aggregator.duplicates,
            "last_error": state.aggregator.last_error,
        },
    }
    return JSONResponse(body, status_code=200 if wal.healthy else 503)
