"""POST /v1/regression-runs: CI reports replay outcomes per bundle, with a CI token of the project (`frc_`,
`fluxrun server admin create-token PROJECT --ci`; in CI, FLUXRUN_DSN=https://frc_...@host/WORKSPACE/PROJECT).
A fixed replay guards the bundle's issue; a reproduced or changed one marks it regressed.

An ingest token (`frt_`) is refused here: it sits on every app host, and a compromised host must not be
able to mark regressions "guarded"."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field
from sqlmodel import Session

from fluxrun_server.api.deps import State
from fluxrun_server.auth import CI_TOKEN, TokenError, check_token, token_prefix
from fluxrun_server.index.models import Execution, Issue, RegressionRun, utcnow

router = APIRouter(tags=["ingest"])


async def ci_project(request: Request, state: State) -> int:
    """The project of the request's CI token; 401 for anything else, an ingest token included."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    challenge = {"WWW-Authenticate": "Bearer"}
    if scheme.lower() != "bearer" or not value.strip():
        raise HTTPException(401, "missing credentials: send Authorization: Bearer <CI token (frc_)>", headers=challenge)
    try:
        token = check_token(value, CI_TOKEN)
    except TokenError as exc:
        hint = (
            " Ingest tokens cannot report replay outcomes: mint a CI token with "
            "`fluxrun server admin create-token WORKSPACE/PROJECT --ci` and use it in CI's FLUXRUN_DSN"
            if value.strip().startswith("frt_")
            else ""
        )
        raise HTTPException(401, f"invalid CI token: {exc}.{hint}", headers=challenge) from None
    project_id = state.project_for_token(token, token_prefix(token))
    if project_id is None:
        raise HTTPException(401, "CI token is unknown or revoked", headers=challenge)
    return project_id


CIProject = Annotated[int, Depends(ci_project)]


class Outcome(BaseModel):
    bundle_id: str
    outcome: Literal["fixed", "reproduced", "changed"]
    ci: dict[str, Any] = Field(default_factory=dict, description="run id, commit, branch, url...")


class Report(BaseModel):
    results: list[Outcome] = Field(..., min_length=1, max_length=5000)


@router.post("/v1/regression-runs", status_code=201, summary="Record CI replay outcomes per bundle")
def report(body: Report, state: State, project_id: CIProject) -> dict[str, Any]:
    updated: dict[int, str] = {}
    unknown: list[str] = []
    with Session(state.engine) as session:
        for result in body.results:
            execution = session.get(Execution, (result.bundle_id, project_id))
            if execution is None:
                unknown.append(result.bundle_id)
                continue
            session.add(
                RegressionRun(
                    project_id=project_id,
                    bundle_id=result.bundle_id,
                    issue_id=execution.issue_id,
                    outcome=result.outcome,
                    ci=result.ci,
                )
            )
            if execution.issue_id is not None:
                issue = session.get(Issue, execution.issue_id)
                if issue is not None:
                    issue.status = "guarded" if result.outcome == "fixed" else "regressed"
                    issue.status_changed_at = utcnow()
                    session.add(issue)
                    updated[execution.issue_id] = issue.status
        session.commit()
    if unknown and not updated and len(unknown) == len(body.results):
        raise HTTPException(404, f"none of these bundles are known to this project: {', '.join(unknown[:5])}")
    return {"issues": [{"id": k, "status": v} for k, v in updated.items()], "unknown_bundles": unknown}
