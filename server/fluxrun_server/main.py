"""`create_app(settings)`: the FluxRun ingest and query server as a FastAPI app.

Start-up runs the schema migrations, opens (and if needed repairs) the WAL, opens the object store
and starts the aggregator process; shutdown stops the aggregator and closes the WAL. Nothing here holds a
key that opens a payload.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError

from fluxrun._version import __version__
from fluxrun_server.api.edge import EdgeGuard, EdgeLimits
from fluxrun_server.api.protocol import edge_protocol
from fluxrun_server.api.routes import dashboard, grants, health, ingest, query, regressions, triage
from fluxrun_server.control import graphql as control_graphql
from fluxrun_server.control import routes as control_routes
from fluxrun_server.control.runtime import ControlPlane
from fluxrun_server.grants import load_or_create as load_grant_key
from fluxrun_server.index.database import make_engine, migrate
from fluxrun_server.ingest.aggregator_process import AggregatorProcess
from fluxrun_server.ingest.log import AggregatorLink, EdgeLog
from fluxrun_server.ingest.wal import WriteAheadLog
from fluxrun_server.settings import ServerSettings
from fluxrun_server.state import RETRY_AFTER_OUTAGE, ServerState
from fluxrun_server.storage.factory import open_store

__all__ = ["create_app", "edge_limits", "uvicorn_options"]

log = logging.getLogger("fluxrun_server")

SWITCH_INTERVAL_S = 0.0005


def open_state(settings: ServerSettings) -> ServerState:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    load_grant_key(settings.data_dir)  # DATA_DIR/grant.key, created at first start; cached in fluxrun_server.grants
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    store = open_store(
        settings.resolved_object_store_url,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
    )
    wal: EdgeLog
    aggregator: AggregatorLink
    if settings.log_url:  # scale-out: publish to JetStream; `fluxrun server aggregate` processes store
        from fluxrun_server.ingest.aggregate_node import open_distributed_log

        wal, aggregator = open_distributed_log(settings)
    else:
        wal, aggregator = _open_local_log(settings)
    return ServerState(settings=settings, engine=engine, wal=wal, store=store, aggregator=aggregator)


def _open_local_log(settings: ServerSettings) -> tuple[WriteAheadLog, AggregatorProcess]:
    """The embedded default: the WAL on this node's disk and this node's own aggregator process."""
    wal = WriteAheadLog(settings.wal_dir, segment_bytes=settings.wal_segment_bytes)
    report = wal.open()
    if report.truncated_bytes:
        log.warning(
            "WAL: truncated a torn tail of %d bytes; %d records recovered", report.truncated_bytes, report.records
        )
    return wal, AggregatorProcess(wal, settings)


def edge_limits(settings: ServerSettings) -> EdgeLimits:
    """Body limits by path (ingest and CI reports are the big ones; everything else is small JSON) and the
    body deadline, enforced before any route parses or authenticates anything."""
    return EdgeLimits(
        default_body_bytes=settings.max_request_body_bytes,
        body_timeout_s=settings.body_timeout_s,
        body_bytes_by_path={
            ingest.PATH: settings.max_batch_bytes,
            "/v1/regression-runs": settings.max_report_body_bytes,
        },
    )


def uvicorn_options(settings: ServerSettings) -> dict[str, Any]:
    """What `fluxrun server` gives uvicorn besides the app: the headers' deadline and size limit."""
    return {"http": edge_protocol(settings.header_timeout_s, settings.max_header_bytes)}


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Handoffs between the event loop and the WAL writer (whose fsync finishing resolves the acks) wait for
        # the GIL up to one switch interval: 5 ms by default, a fifth of the ack-latency budget.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        state = open_state(settings)
        app.state.fluxrun = state
        control = app.state.control = ControlPlane(state.engine, state.store)
        state.aggregator.start()
        control.start()
        try:
            yield
        finally:
            control.stop()
            state.aggregator.stop()
            state.wal.close()
            state.engine.dispose()

    app = FastAPI(
        title="FluxRun server",
        version=__version__,
        summary="Durable ingest of sealed bundles and the query API for triage. Payloads stay encrypted.",
        lifespan=lifespan,
    )
    app.add_exception_handler(OperationalError, database_unavailable)
    app.add_exception_handler(InterfaceError, database_unavailable)
    app.include_router(control_graphql.router)
    app.include_router(control_routes.router)
    for module in (ingest, regressions, query, triage, grants, health, dashboard):
        app.include_router(module.router)
    app.add_middleware(ingest.IngestFastPath)  # POST /v1/executions without FastAPI's per-request machinery
    app.add_middleware(EdgeGuard, limits=edge_limits(settings))  # outermost: limits before anything reads a body
    return app


async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """A query the database cannot answer (down, unreachable, locked) is a 503 with Retry-After, logged in one
    line: the caller retries, the operator is not handed a traceback per request."""
    log.warning("%s %r: the database is unavailable (%s)", request.method, request.url.path, type(exc).__name__)
    return JSONResponse(
        {"detail": "the server's database is unavailable; retry later"},
        status_code=503,
        headers={"Retry-After": RETRY_AFTER_OUTAGE},
    )
