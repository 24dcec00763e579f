"""POST /v1/executions: the edge. Token, limits, per-bundle signature check, WAL + fsync, then 202.

A bad bundle is rejected alone, with its reason, and the rest of the batch is kept. The answer is
202 only once every accepted bundle is durable in the WAL (group commit: concurrent requests share
an fsync). If the disk is full the answer is 503 with Retry-After; if the WAL cannot be trusted any
more (an fsync failed) it is 503 and the node reports itself unhealthy.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from fluxrun_server.api.deps import IngestProject, State, project_for_authorization
from fluxrun_server.control.runtime import IngestGate
from fluxrun_server.control.usage import Gate
from fluxrun_server.ingest.batch import BatchError, TooLarge, decode_batch, decompress, read_limited
from fluxrun_server.ingest.identity import IndexUnavailable, identities_for
from fluxrun_server.ingest.records import pack_record
from fluxrun_server.ingest.verify import Verifier
from fluxrun_server.ingest.wal import WALError, WALFullError
from fluxrun_server.state import ServerState

PATH = "/v1/executions"

# Signature checks of multi-bundle batches run on a few threads (libsodium releases the GIL); one pool per process.
_verifier = Verifier()
# Compressed batches are inflated on one thread beside the event loop (zstd and zlib release the GIL), one at a
# time: a decompression bomb costs at most one batch's inflate limit of memory, however many arrive at once.
_inflater = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fluxrun-inflate")


@asynccontextmanager
async def _start_verifier(_app: Any) -> AsyncIterator[None]:
    _verifier.start()  # in the background, while the rest of the server starts; it lives as long as the process
    yield


router = APIRouter(tags=["ingest"], lifespan=_start_verifier)


@router.post(
    PATH,
    status_code=202,
    summary="Ingest a batch of sealed bundles",
    responses={
        413: {"description": "body or bundle over a limit"},
        409: {"description": "every bundle of the batch reuses an id the project has for a different bundle"},
        429: {"description": "backlog full, project rate limit, or daily quota spent (the detail says which)"},
    },
)
async def ingest(request: Request, state: State, project_id: IngestProject, gate: IngestGate) -> Response:
    """The documented route. The server answers POST /v1/executions through `IngestFastPath` (same code,
    without FastAPI's routing and dependency machinery); this one serves the schema and any app that
    includes the router without the middleware."""
    answer = await handle(state, gate, project_id, request.headers, request.stream())
    return Response(answer, status_code=202, media_type="application/json")


async def handle(
    state: ServerState, gate: Gate, project_id: int, headers: Mapping[str, str], chunks: AsyncIterator[bytes]
) -> bytes:
    """Everything after the token check: limits, decode, signatures, WAL + fsync; the 202 body, or HTTPException."""
    settings = state.settings
    gate.admit(project_id)  # 429 before the body is read: over the project's rate, or its daily quota is spent
    if state.wal.backlog_bytes > settings.wal_backlog_bytes:
        if state.aggregator.last_error:  # an outage (database or object store down) spent the WAL's budget
            raise HTTPException(
                503,
                "the server cannot index bundles right now and its buffer is full; retry later",
                headers={"Retry-After": "30"},
            )
        raise HTTPException(
            429, "the server is catching up on stored bundles; retry shortly", headers={"Retry-After": "2"}
        )
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > settings.max_batch_bytes:
        raise HTTPException(413, f"request body is {length} bytes, over the {settings.max_batch_bytes} byte limit")
    try:
        body = await read_limited(chunks, settings.max_batch_bytes)
        encoding = headers.get("content-encoding")
        if encoding is None or encoding.strip().lower() in ("", "identity"):
            data = body
        else:
            loop = asyncio.get_running_loop()
            data = await loop.run_in_executor(_inflater, decompress, body, encoding, settings.max_decompressed_bytes)
        bundles = decode_batch(
            data, max_bundles=settings.max_bundles_per_batch, max_bundle_bytes=settings.max_bundle_bytes
        )
    except TooLarge as exc:
        _charge_refused(gate, project_id, "batch_too_large", str(exc))
        raise HTTPException(413, str(exc)) from None
    except BatchError as exc:
        _charge_refused(gate, project_id, "malformed_batch", str(exc))
        raise HTTPException(400, f"malformed batch: {exc}") from None

    identities = identities_for(state.engine)  # (project, bundle id) is the identity: ingest/identity.py
    try:
        project_name = identities.project_name(project_id)  # cached: the database is asked once per project
    except IndexUnavailable:
        raise HTTPException(
            503, "the server's database is unavailable; retry later", headers={"Retry-After": "10"}
        ) from None
    verdicts = await _verifier.check(bundles, state.signers(project_id), project_name)
    indexed = await identities.lookup(project_id, verdicts)
    duplicates = identities.conflicts(project_id, verdicts, indexed)  # no await from here until the ids are claimed
    accepted: list[str] = []
    records: list[bytes] = []
    rejected: list[dict[str, Any]] = []
    digests: dict[str, bytes] = {}
    for index, (raw, verdict) in enumerate(zip(bundles, verdicts, strict=True)):
        if verdict.reason is not None or verdict.bundle_id is None or verdict.sha256 is None:
            rejected.append(
                {"index": index, "bundle_id": verdict.bundle_id, "reason": verdict.reason, "message": verdict.message}
            )
            continue
        if index in duplicates:
            rejected.append(
                {"index": index, "bundle_id": verdict.bundle_id, "reason": "duplicate_id", "message": duplicates[index]}
            )
            continue
        accepted.append(verdict.bundle_id)
        records.append(pack_record(project_id, raw))
        digests[verdict.bundle_id] = verdict.sha256

    # The ids are claimed before anything is awaited (two requests cannot both take one id); what the quota
    # then trims is given back.
    claimed = [(bundle_id, digests[bundle_id]) for bundle_id in accepted]
    identities.claim(project_id, claimed)
    try:
        if accepted and gate.reserves(project_id):  # the quota is reserved in the database: not on the event loop
            charge = await asyncio.to_thread(gate.charge, project_id, accepted, records, rejected)
        else:
            charge = gate.charge(project_id, accepted, records, rejected)  # quota and plan limits trim the batch
    except BaseException:
        identities.release(project_id, claimed)
        raise
    if len(accepted) < len(claimed):
        kept = set(accepted)
        identities.release(project_id, [item for item in claimed if item[0] not in kept])
        claimed = [item for item in claimed if item[0] in kept]
    if duplicates and not accepted and all(r["reason"] == "duplicate_id" for r in rejected):
        raise HTTPException(409, {"message": next(iter(duplicates.values())), "rejected": rejected})
    if records:
        try:
            await state.wal.append_async(records)
        except WALFullError:
            identities.release(project_id, claimed)
            gate.refund(charge)
            raise HTTPException(503, "the server's disk is full; retry later", headers={"Retry-After": "30"}) from None
        except WALError as exc:
            identities.release(project_id, claimed)
            gate.refund(charge)
            raise HTTPException(
                503, f"the server cannot store bundles durably right now ({exc}); try another node"
            ) from None
        state.aggregator.wake()
    return orjson.dumps({"accepted": accepted, "rejected": rejected})


def _charge_refused(gate: Gate, project_id: int, reason: str, message: str) -> None:
    """A refused batch costs its sender a bundle of its rate and counts as a rejection in its usage: refusals
    were free before, so a sender over its rate could keep the server reading and inflating for nothing."""
    gate.charge(project_id, [], [], [{"index": None, "bundle_id": None, "reason": reason, "message": message}])


class IngestFastPath:
    """ASGI middleware: answers POST /v1/executions itself, everything else goes to the app.

    The route above costs the same work plus FastAPI's per-request machinery (routing through every
    router, dependency solving, the request and response wrappers, the exception and body-limit
    middleware), about a quarter of the server's CPU for a single-bundle request. Here it is the
    token check, `handle`, and HTTPException answered as FastAPI's default handler would
    ({"detail": ...} with the exception's status and headers). Installed inside the server-error
    middleware, so a bug still becomes a 500.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        app_state = request.app.state
        state: ServerState = app_state.fluxrun
        headers = request.headers
        try:
            project_id = project_for_authorization(state, headers.get("authorization", ""))
            answer = await handle(state, app_state.control.gate, project_id, headers, request.stream())
        except ClientDisconnect:
            return  # the shipper hung up mid-body: nothing was stored, nobody is left to answer
        except HTTPException as exc:
            response: Response = JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        else:
            response = Response(answer, status_code=202, media_type="application/json")
        await response(scope, receive, send)
