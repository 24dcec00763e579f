"""POST /v1/executions: the edge. Token, limits, per-bundle signature check, WAL + fsync, then 202.

A bad bundle is rejected alone, with its reason, and the rest of the batch is kept. The answer is
202 only once every accepted bundle is durable in the WAL (group commit: concurrent requests share
an fsync). If the disk is full the answer is 503 with Retry-After; if the WAL cannot be trusted any
more (an fsync failed) it is 503 and the node reports itself unhealthy.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from fluxrun.bundle import read_bundle, verify_signature
from fluxrun.errors import BundleError
from fluxrun_server.api.deps import IngestProject, State
from fluxrun_server.ingest.batch import BatchError, TooLarge, decode_batch, decompress, read_limited
from fluxrun_server.ingest.records import pack_record
from fluxrun_server.ingest.wal import WALError, WALFullError

router = APIRouter(tags=["ingest"])
SUPPORTED_VERSIONS = (1,)


@router.post(
    "/v1/executions",
    status_code=202,
    summary="Ingest a batch of sealed bundles",
    responses={413: {"description": "body or bundle over a limit"}, 429: {"description": "backlog full"}},
)
async def ingest(request: Request, state: State, project_id: IngestProject) -> JSONResponse:
    settings = state.settings
    if state.wal.backlog_bytes > settings.wal_backlog_bytes:
        raise HTTPException(
            429, "the server is catching up on stored bundles; retry shortly", headers={"Retry-After": "2"}
        )
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > settings.max_batch_bytes:
        raise HTTPException(413, f"request body is {length} bytes, over the {settings.max_batch_bytes} byte limit")
    try:
        body = await read_limited(request.stream(), settings.max_batch_bytes)
        data = decompress(body, request.headers.get("content-encoding"), settings.max_decompressed_bytes)
        bundles = decode_batch(
            data, max_bundles=settings.max_bundles_per_batch, max_bundle_bytes=settings.max_bundle_bytes
        )
    except TooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    except BatchError as exc:
        raise HTTPException(400, f"malformed batch: {exc}") from None

    signers = state.signers(project_id)
    accepted: list[str] = []
    records: list[bytes] = []
    rejected: list[dict[str, Any]] = []
    for index, raw in enumerate(bundles):
        try:
            sealed = read_bundle(raw)
            if sealed.version not in SUPPORTED_VERSIONS:  # read_bundle refuses unknown versions already
                raise BundleError("unsupported_version", f"format version {sealed.version} is not accepted")
            if not signers:
                raise BundleError(
                    "unknown_key_id",
                    f"project has no registered signing keys; register {sealed.signing_key_id} with "
                    "`fluxrun server admin add-key` (the key comes from `fluxrun keys public capture.key`)",
                )
            verify_signature(sealed, signers)
        except BundleError as exc:
            rejected.append({"index": index, "bundle_id": _bundle_id(raw), "reason": exc.reason, "message": str(exc)})
            continue
        accepted.append(sealed.bundle_id)
        records.append(pack_record(project_id, raw))

    if records:
        try:
            await state.wal.append_async(records)
        except WALFullError:
            raise HTTPException(503, "the server's disk is full; retry later", headers={"Retry-After": "30"}) from None
        except WALError as exc:
            raise HTTPException(
                503, f"the server cannot store bundles durably right now ({exc}); try another node"
            ) from None
        state.aggregator.wake()
    return JSONResponse({"accepted": accepted, "rejected": rejected}, status_code=202)


def _bundle_id(raw: bytes) -> str | None:
    try:
        return read_bundle(raw).bundle_id
    except BundleError:
        return None
