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

from fastapi import FastAPI

from fluxrun._version import __version__
from fluxrun_server.api.routes import dashboard, grants, health, ingest, query, regressions
from fluxrun_server.control import graphql as control_graphql
from fluxrun_server.control import routes as control_routes
from fluxrun_server.control.runtime import ControlPlane
from fluxrun_server.grants import load_or_create as load_grant_key
from fluxrun_server.index.database import make_engine, migrate
from fluxrun_server.ingest.aggregator_process import AggregatorProcess
from fluxrun_server.ingest.wal import WriteAheadLog
from fluxrun_server.settings import ServerSettings
from fluxrun_server.state import ServerState
from fluxrun_server.storage.base import open_store

__all__ = ["create_app"]

log = logging.getLogger("fluxrun_server")

SWITCH_INTERVAL_S = 0.0005


def open_state(settings: ServerSettings) -> ServerState:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    load_grant_key(settings.data_dir)  # DATA_DIR/grant.key, created at first start; cached in fluxrun_server.grants
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    wal = WriteAheadLog(settings.wal_dir, segment_bytes=settings.wal_segment_bytes)
    report = wal.open()
    if report.truncated_bytes:
        log.warning(
            "WAL: truncated a torn tail of %d bytes; %d records recovered", report.truncated_bytes, report.records
        )
    store = open_store(
        settings.resolved_object_store_url,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
    )
    aggregator = AggregatorProcess(wal, settings)
    return ServerState(settings=settings, engine=engine, wal=wal, store=store, aggregator=aggregator)


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
    app.include_router(control_graphql.router)
    app.include_router(control_routes.router)
    for module in (ingest, regressions, query, grants, health, dashboard):
        app.include_router(module.router)
    app.add_middleware(ingest.IngestFastPath)  # POST /v1/executions without FastAPI's per-request machinery
    return app
