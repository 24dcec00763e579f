"""Request dependencies as `Annotated` aliases: the server state, the ingest project, the query workspace."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request

from fluxrun_server.auth import API_KEY, INGEST_TOKEN, TokenError, check_token, token_prefix
from fluxrun_server.state import ServerState

__all__ = ["IngestProject", "OptionalRowId", "Reader", "RowId", "State", "Workspace", "project_for_authorization"]

# Ids of index rows (projects, issues) in URLs: integer columns, so a larger number is no id at all. Refused with a
# 422 that says the range, rather than handed to the database (SQLite overflowed on it: a 500).
ROW_ID_MAX = 2**31 - 1
RowId = Annotated[int, Path(ge=1, le=ROW_ID_MAX, description="a row id")]
OptionalRowId = Annotated[int | None, Query(ge=1, le=ROW_ID_MAX)]


# `async def` dependencies run on the event loop; a plain `def` would hop to the threadpool for every request.
async def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.fluxrun
    return state


State = Annotated[ServerState, Depends(get_state)]


def _bearer(request: Request) -> str:
    return _bearer_value(request.headers.get("authorization", ""))


def _bearer_value(header: str) -> str:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value:
        raise HTTPException(
            401, "missing credentials: send Authorization: Bearer <token>", headers={"WWW-Authenticate": "Bearer"}
        )
    return value.strip()


async def ingest_project(request: Request, state: State) -> int:
    """The project of the request's ingest token (cached for CACHE_SECONDS, so the database is rarely asked)."""
    return project_for_authorization(state, request.headers.get("authorization", ""))


def project_for_authorization(state: ServerState, authorization: str) -> int:
    """`ingest_project` from an Authorization header value (also used by the ingest fast path)."""
    raw = _bearer_value(authorization)
    try:
        token = check_token(raw, INGEST_TOKEN)
    except TokenError as exc:
        raise HTTPException(401, f"invalid ingest token: {exc}", headers={"WWW-Authenticate": "Bearer"}) from None
    project_id = state.project_for_token(token, token_prefix(token))
    if project_id is None:
        raise HTTPException(401, "ingest token is unknown or revoked", headers={"WWW-Authenticate": "Bearer"})
    return project_id


IngestProject = Annotated[int, Depends(ingest_project)]


@dataclass(frozen=True)
class Reader:
    workspace_id: int
    role: str


def query_reader(request: Request, state: State) -> Reader:
    raw = _bearer(request)
    try:
        token = check_token(raw, API_KEY)
    except TokenError as exc:
        status = 403 if raw.startswith("frt_") else 401
        raise HTTPException(
            status, f"cannot read the query API: {exc}", headers={"WWW-Authenticate": "Bearer"}
        ) from None
    found = state.api_key(token, token_prefix(token))
    if found is None:
        raise HTTPException(401, "API key is unknown or revoked", headers={"WWW-Authenticate": "Bearer"})
    return Reader(*found)


Workspace = Annotated[Reader, Depends(query_reader)]
