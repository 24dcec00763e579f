"""Finding a run by its bundle id for a workspace's API key: one answer for "absent" and "someone else's".

Bundle ids are unique within a project only (the app chooses them), so a workspace may hold one id in two of
its projects: then the caller names the project. A run of another workspace is reported exactly as a run
that does not exist (same status, same text), so ids cannot be probed across workspaces.
"""

from __future__ import annotations

from fastapi import HTTPException
from sqlmodel import Session, col, select

from fluxrun_server.index.models import Execution, Issue, Project

__all__ = ["find_issue", "find_run"]


def find_run(session: Session, workspace_id: int, bundle_id: str, project_id: int | None = None) -> Execution:
    """The run `bundle_id` of the workspace (of `project_id` when given); 404 if none, 409 if ambiguous."""
    query = (
        select(Execution)
        .join(Project, col(Project.id) == Execution.project_id)
        .where(Execution.bundle_id == bundle_id, Project.workspace_id == workspace_id)
    )
    if project_id is not None:
        query = query.where(Execution.project_id == project_id)
    found = session.exec(query.limit(2)).all()
    if not found:
        raise HTTPException(404, f"no run {bundle_id[:64]}")
    if len(found) > 1:
        raise HTTPException(
            409,
            f"run {bundle_id[:64]} exists in projects {found[0].project_id} and {found[1].project_id} of this "
            "workspace; name one with project_id",
        )
    return found[0]


def find_issue(session: Session, workspace_id: int, issue_id: int) -> Issue:
    """The issue of the workspace; 404 with the same text whether it is absent or another workspace's."""
    issue = session.get(Issue, issue_id)
    project = session.get(Project, issue.project_id) if issue is not None else None
    if issue is None or project is None or project.workspace_id != workspace_id:
        raise HTTPException(404, f"no issue {issue_id}")
    return issue
