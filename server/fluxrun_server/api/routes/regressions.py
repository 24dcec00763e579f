"""POST /v1/regression-runs: CI reports replay outcomes per bundle (with the project's ingest token, the
same DSN the app ships with). A fixed replay guards the bundle's issue; a reproduced or changed one
marks it regressed."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field
from sqlmodel import Session

from fluxrun_server.api.deps import IngestProject, State
from fluxrun_server.index.models import Execution, Issue, RegressionRun, utcnow

router = APIRouter(tags=["ingest"])


class Outcome(BaseModel):
    bundle_id: str
    outcome: Literal["fixed", "reproduced", "changed"]
    ci: dict[str, Any] = Field(default_factory=dict, description="run id, commit, branch, url...")


class Report(BaseModel):
    results: list[Outcome] = Field(..., min_length=1, max_length=5000)


@router.post("/v1/regression-runs", status_code=201, summary="Record CI replay outcomes per bundle")
def report(body: Report, state: State, project_id: IngestProject) -> dict[str, Any]:
    updated: dict[int, str] = {}
    unknown: list[str] = []
    with Session(state.engine) as session:
        for result in body.results:
            execution = session.get(Execution, result.bundle_id)
            if execution is None or execution.project_id != project_id:
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
