"""GET /v1/usage: usage counters per project per UTC day for the API key's workspace (any role)."""

from __future__ import annotations

from datetime import date
from typing import Any

from fastapi import APIRouter, HTTPException
from sqlmodel import Session

from fluxrun_server.api.deps import State, Workspace
from fluxrun_server.control import ops

router = APIRouter(tags=["usage"])


@router.get("/v1/usage", summary="Bundles accepted, rejected by reason, bytes stored and deleted, per project per day")
def get_usage(
    state: State,
    reader: Workspace,
    project_id: int | None = None,
    since: date | None = None,
    until: date | None = None,
) -> dict[str, Any]:
    actor = ops.Actor("apikey", reader.role, reader.workspace_id)
    with Session(state.engine) as session:
        try:
            if project_id is not None:
                projects = [ops.project(session, actor, project_id)]
            else:
                projects = ops.list_projects(session, actor)
            out = []
            for project in projects:
                assert project.id is not None
                days = ops.usage(session, actor, project.id, since, until)
                plan = ops.project_plan(session, project.id)
                out.append(
                    {
                        "project_id": project.id,
                        "project": project.name,
                        "plan": plan.name if plan else None,
                        "days": [
                            {
                                "day": d.day.isoformat(),
                                "accepted": d.accepted,
                                "bytes": d.bytes,
                                "rejected": d.rejected,
                                "deleted": d.deleted,
                                "deleted_bytes": d.deleted_bytes,
                            }
                            for d in days
                        ],
                        "totals": {
                            "accepted": sum(d.accepted for d in days),
                            "bytes": sum(d.bytes for d in days),
                            "rejected": sum(sum(d.rejected.values()) for d in days),
                            "deleted": sum(d.deleted for d in days),
                            "deleted_bytes": sum(d.deleted_bytes for d in days),
                        },
                    }
                )
        except ops.NotFound as exc:
            raise HTTPException(404, str(exc)) from None
        except ops.OperationError as exc:
            raise HTTPException(400, str(exc)) from None
    return {"usage": out}
