"""Issue triage actions the dashboard offers: resolve, ignore (snoozed until N more events) and reopen.

Each action changes the issue and writes its audit entry in the same transaction, as control/ops.py does
for management changes, so the audit log says who resolved, ignored or reopened what, and when. The older
`PATCH /v1/issues/{id}` (any status) is audited the same way.

An ignored issue stays ignored until its count reaches the count it had when ignored plus N. That threshold
lives in the ignore's audit entry (`until_count`), so no schema change is needed; the server reopens the
issue (status `open`, audited as `issue.snooze_expired` by `server`) when it next reads it at or past that
count. The ingest aggregator leaves ignored issues ignored: it only turns resolved and guarded ones into
regressed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from fluxrun_server.api.deps import Reader, RowId, State, Workspace
from fluxrun_server.api.routes.query import IssueStatus, _issue, _issue_item
from fluxrun_server.auth import token_prefix
from fluxrun_server.control import ops
from fluxrun_server.control.models import AuditEntry
from fluxrun_server.index.models import Issue, utcnow

__all__ = ["MAX_SNOOZE_EVENTS", "router"]

router = APIRouter(tags=["triage"])
MAX_SNOOZE_EVENTS = 1_000_000
_HISTORY = 50
_ACTIONS = ("issue.resolve", "issue.ignore", "issue.reopen", "issue.status", "issue.snooze_expired")
# What `PATCH /v1/issues/{id}` is audited as, by the status it sets (the other statuses: "issue.status").
_PATCH_ACTIONS = {"resolved": "issue.resolve", "open": "issue.reopen"}


class StatusChange(BaseModel):
    status: IssueStatus


class IgnoreRequest(BaseModel):
    events: int = Field(ge=1, le=MAX_SNOOZE_EVENTS, description="reopen after this many more events")


def _actor(request: Request, reader: Reader) -> ops.Actor:
    """The API key's prefix names who acted in the audit log, as for every other change."""
    raw = request.headers.get("authorization", "").partition(" ")[2].strip()
    client = request.client.host if request.client else None
    return ops.Actor(f"api_key:{token_prefix(raw)}", reader.role, reader.workspace_id, client)


def _target(issue: Issue) -> str:
    return f"issue:{issue.id}"


def _last_ignore(session: Session, issue: Issue, workspace_id: int) -> AuditEntry | None:
    return session.exec(
        select(AuditEntry)
        .where(
            AuditEntry.workspace_id == workspace_id,
            AuditEntry.target == _target(issue),
            AuditEntry.action == "issue.ignore",
        )
        .order_by(col(AuditEntry.id).desc())
        .limit(1)
    ).first()


def _expire_snooze(session: Session, issue: Issue, workspace_id: int) -> AuditEntry | None:
    """Reopen an ignored issue whose count reached its snooze threshold; return the ignore entry if it holds."""
    if issue.status != "ignored":
        return None
    entry = _last_ignore(session, issue, workspace_id)
    until = entry.detail.get("until_count") if entry is not None else None
    if isinstance(until, int) and issue.count < until:
        return entry
    issue.status = "open"
    issue.status_changed_at = utcnow()
    session.add(issue)
    server = ops.Actor("server", "system", workspace_id, "server")
    ops._audit(session, server, workspace_id, "issue.snooze_expired", _target(issue), count=issue.count, until=until)
    session.commit()
    session.refresh(issue)
    return None


def _triage(session: Session, issue: Issue, workspace_id: int) -> dict[str, Any]:
    ignore = _expire_snooze(session, issue, workspace_id)
    history = session.exec(
        select(AuditEntry)
        .where(
            AuditEntry.workspace_id == workspace_id,
            AuditEntry.target == _target(issue),
            col(AuditEntry.action).in_(_ACTIONS),
        )
        .order_by(col(AuditEntry.id).desc())
        .limit(_HISTORY)
    ).all()
    snooze = None
    if ignore is not None:
        until = int(ignore.detail["until_count"])
        snooze = {"until_count": until, "remaining": until - issue.count, "events": ignore.detail.get("events")}
    return {
        **_issue_item(issue),
        "snooze": snooze,
        "history": [
            {"action": e.action, "actor": e.actor, "detail": e.detail, "created_at": e.created_at.isoformat()}
            for e in history
        ],
    }


def _change(
    request: Request,
    state: State,
    reader: Reader,
    issue_id: int,
    status: str,
    action: str,
    answer: Callable[[Session, Issue, int], dict[str, Any]] | None = None,
    **detail: Any,
) -> dict[str, Any]:
    """Set the issue's status and audit it in one transaction; the answer is its triage state (or `answer`'s)."""
    if reader.role == "viewer":
        raise HTTPException(403, "viewers cannot change issues")
    actor = _actor(request, reader)
    with Session(state.engine) as session:
        issue = _issue(session, reader, issue_id)
        old = issue.status
        issue.status = status
        issue.status_changed_at = utcnow()
        session.add(issue)
        until = {"until_count": issue.count + detail["events"]} if "events" in detail else {}
        ops._audit(session, actor, reader.workspace_id, action, _target(issue), old=old, **detail, **until)
        session.commit()
        session.refresh(issue)
        return (answer or _triage)(session, issue, reader.workspace_id)


@router.get("/v1/issues/{issue_id}/triage", summary="An issue's triage state: status, snooze and its history")
def get_triage(issue_id: int, state: State, reader: Workspace) -> dict[str, Any]:
    with Session(state.engine) as session:
        return _triage(session, _issue(session, reader, issue_id), reader.workspace_id)


@router.post("/v1/issues/{issue_id}/resolve", summary="Resolve an issue (it regresses if it is seen again)")
def resolve(issue_id: int, request: Request, state: State, reader: Workspace) -> dict[str, Any]:
    return _change(request, state, reader, issue_id, "resolved", "issue.resolve")


@router.post("/v1/issues/{issue_id}/ignore", summary="Ignore an issue until it has N more events")
def ignore(issue_id: int, body: IgnoreRequest, request: Request, state: State, reader: Workspace) -> dict[str, Any]:
    return _change(request, state, reader, issue_id, "ignored", "issue.ignore", events=body.events)


@router.post("/v1/issues/{issue_id}/reopen", summary="Reopen a resolved, ignored or guarded issue")
def reopen(issue_id: int, request: Request, state: State, reader: Workspace) -> dict[str, Any]:
    return _change(request, state, reader, issue_id, "open", "issue.reopen")


@router.patch("/v1/issues/{issue_id}", summary="Change an issue's status (audited like resolve and reopen)")
def change_issue(
    issue_id: RowId, change: StatusChange, request: Request, state: State, reader: Workspace
) -> dict[str, Any]:
    action = _PATCH_ACTIONS.get(change.status, "issue.status")
    return _change(
        request,
        state,
        reader,
        issue_id,
        change.status,
        action,
        lambda _s, issue, _w: _issue_item(issue),
        new=change.status,
    )
