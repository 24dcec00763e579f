"""Grants for the customer's agent: the server decides who may unlock or replay a bundle and signs that
decision; the agent, which alone holds the replay key, checks the signature before it decrypts.

`GET /v1/grant-key` is public (it is a public key: operators copy it into FLUXRUN_AGENT_GRANT_KEY).
`POST /v1/grants` needs a workspace API key and only grants bundles of that workspace. A grant names the
bundle's SHA-256 as the index stores it for the sealed bytes `GET /v1/runs/{id}/bundle` serves (that read is
checked against the same hash), so the agent opens exactly those bytes and no other bundle with the id.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field
from sqlmodel import Session

from fluxrun.grant import DEFAULT_TTL_SECONDS, MAX_TTL_SECONDS
from fluxrun_server.api.deps import State, Workspace
from fluxrun_server.api.runs import find_run
from fluxrun_server.auth import token_prefix
from fluxrun_server.grants import grant_key_for, issue_grant
from fluxrun_server.index.models import Project
from fluxrun_server.index.models import Workspace as WorkspaceRow
from fluxrun_server.ingest.verify import BUNDLE_ID

router = APIRouter(tags=["grants"])
log = logging.getLogger("fluxrun_server")

# Roles that may see a payload unmasked (protected grants); everyone else gets the agent's masked view.
PROTECTED_ROLES = ("owner", "admin")


class GrantRequest(BaseModel):
    bundle_id: str = Field(pattern=f"^{BUNDLE_ID.pattern}$", description="a bundle id as ingest accepts them")
    action: Literal["unlock", "replay"]
    project_id: int | None = Field(None, description="the run's project, when the workspace has its id in two")
    protected: bool = False
    ttl_seconds: int = Field(DEFAULT_TTL_SECONDS, ge=1, le=MAX_TTL_SECONDS)


@router.get("/v1/grant-key", summary="The server's grant public key, for agents to pin (no credentials needed)")
def get_grant_key(state: State) -> dict[str, str]:
    key = grant_key_for(state.settings.data_dir)
    return {"key_id": key.key_id, "public_key": key.public_b64, "pinned": key.pinned}


@router.post(
    "/v1/grants",
    summary="A short-lived, single-use grant for the customer's agent to unlock or replay one bundle",
    responses={403: {"description": "protected asked by a role other than owner/admin"}, 404: {"description": ""}},
)
def create_grant(body: GrantRequest, request: Request, state: State, reader: Workspace) -> dict[str, Any]:
    with Session(state.engine) as session:
        execution = find_run(session, reader.workspace_id, body.bundle_id, body.project_id)  # 404 for others' runs
        project = session.get(Project, execution.project_id)
        if project is None:
            raise HTTPException(404, f"no run {body.bundle_id}")
        workspace = session.get(WorkspaceRow, project.workspace_id)
        project_name = f"{workspace.name if workspace else project.workspace_id}/{project.name}"
        assert project.id is not None
        project_id = project.id
        bundle_sha256 = execution.object_sha256
    if body.protected and reader.role not in PROTECTED_ROLES:
        raise HTTPException(
            403,
            f"a protected grant shows unmasked values; only {' or '.join(PROTECTED_ROLES)} API keys may ask for one "
            f"(this key's role is {reader.role}). Ask without protected for the masked view",
        )
    requested_by = token_prefix(request.headers.get("authorization", "").partition(" ")[2].strip())
    token, claims = issue_grant(
        grant_key_for(state.settings.data_dir),
        project_id=project_id,
        project=project_name,
        bundle_id=body.bundle_id,
        bundle_sha256=bundle_sha256,
        action=body.action,
        protected=body.protected,
        requested_by=requested_by,
        ttl_seconds=body.ttl_seconds,
    )
    log.info(
        "grant %s for %s on %s (project %s, protected=%s) to %s",
        claims["nonce"][:8],
        body.action,
        body.bundle_id,
        project_name,
        body.protected,
        requested_by,
    )
    return {"grant": token, "claims": claims, "expires_at": claims["expires_at"]}
