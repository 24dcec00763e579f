"""The query API the dashboard and CLI use. Every route needs a workspace API key and sees only that
workspace's projects; an ingest token can never read here."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import Response
from sqlalchemy import Engine, and_, func, literal_column, or_, text
from sqlmodel import Session, col, select

from fluxrun_server.api.deps import OptionalRowId, Reader, RowId, State, Workspace
from fluxrun_server.api.runs import find_issue, find_run
from fluxrun_server.index.models import Execution, Issue, Project, RegressionRun, utcnow
from fluxrun_server.storage.segments import Placement, read_payload

router = APIRouter(tags=["query"])
IssueStatus = Literal["open", "resolved", "regressed", "guarded"]


def _project(session: Session, reader: Reader, project_id: int) -> Project:
    project = session.get(Project, project_id)
    if project is None or project.workspace_id != reader.workspace_id:
        raise HTTPException(404, f"no project {project_id} in this workspace")
    return project


def _execution(session: Session, reader: Reader, bundle_id: str, project_id: int | None = None) -> Execution:
    return find_run(session, reader.workspace_id, bundle_id, project_id)  # another workspace's run: the same 404


def _run_item(e: Execution) -> dict[str, Any]:
    return {
        "bundle_id": e.bundle_id,
        "project_id": e.project_id,
        "issue_id": e.issue_id,
        "started_at": e.started_at.isoformat(),
        "received_at": e.received_at.isoformat(),
        "route": e.route,
        "method": e.method,
        "status": e.status,
        "outcome": e.outcome,
        "error_type": e.error_type,
        "error_message": e.error_message,
        "fingerprint": e.fingerprint,
        "duration_ms": e.duration_ms,
        "release": e.release,
        "environment": e.environment,
        "request_id": e.request_id,
        "trace_id": e.trace_id,
        "event_count": e.event_count,
    }


def _cursor(e: Execution) -> str:
    return base64.urlsafe_b64encode(json.dumps([e.started_at.isoformat(), e.bundle_id]).encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        started, bundle_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(started), str(bundle_id)
    except Exception:
        raise HTTPException(400, "invalid cursor: pass back the next_cursor of the previous page unchanged") from None


@router.get("/v1/projects", summary="Projects of the API key's workspace")
def list_projects(state: State, reader: Workspace) -> dict[str, Any]:
    with Session(state.engine) as session:
        rows = session.exec(select(Project).where(Project.workspace_id == reader.workspace_id)).all()
        return {"projects": [{"id": p.id, "name": p.name, "created_at": p.created_at.isoformat()} for p in rows]}


@router.get("/v1/projects/{project_id}/runs", summary="Captured executions, newest first, with filters")
def list_runs(
    project_id: RowId,
    state: State,
    reader: Workspace,
    outcome: str | None = None,
    route: str | None = None,
    error_type: str | None = None,
    release: str | None = None,
    issue_id: OptionalRowId = None,
    since: datetime | None = None,
    until: datetime | None = None,
    q: str | None = Query(None, description="text in the route, error type or message"),
    cursor: str | None = None,
    limit: int = Query(50, ge=1, le=500),
) -> dict[str, Any]:
    with Session(state.engine) as session:
        _project(session, reader, project_id)
        after = _decode_cursor(cursor) if cursor else None
        text_filters: list[Any] = []
        project_filter: Any = Execution.project_id == project_id
        if q:
            found = _text_candidates(session, state.engine, q)
            if found is NO_MATCH:
                return {"runs": [], "next_cursor": None}
            if found is not None:
                text_filters.append(found)
                if state.engine.dialect.name == "sqlite":
                    # few candidates: look them up by rowid and sort them, rather than walk the project's index
                    project_filter = literal_column("+execution.project_id") == project_id
            pattern = f"%{q}%"
            text_filters.append(
                or_(
                    col(Execution.route).ilike(pattern),
                    col(Execution.error_type).ilike(pattern),
                    col(Execution.error_message).ilike(pattern),
                )
            )
        # Keys first, rows after: the page is chosen from (started_at, bundle_id) alone (index-only for the
        # filters that have a composite index; a narrow sort when text candidates must be sorted), and only
        # the page's rows, summaries included, are read.
        query = select(col(Execution.bundle_id)).where(project_filter, *text_filters)
        for column, value in (
            (Execution.outcome, outcome),
            (Execution.route, route),
            (Execution.error_type, error_type),
            (Execution.release, release),
            (Execution.issue_id, issue_id),
        ):
            if value is not None:
                query = query.where(column == value)
        if since is not None:
            query = query.where(Execution.started_at >= _aware(since))
        if until is not None:
            query = query.where(Execution.started_at < _aware(until))
        if after is not None:
            started, bundle_id = _aware(after[0]), after[1]
            query = query.where(
                col(Execution.started_at) <= started,  # a range the index can seek to; the OR alone is a filter
                or_(
                    col(Execution.started_at) < started,
                    and_(col(Execution.started_at) == started, col(Execution.bundle_id) < bundle_id),
                ),
            )
        newest_first = (col(Execution.started_at).desc(), col(Execution.bundle_id).desc())
        keys = session.exec(query.order_by(*newest_first).limit(limit + 1)).all()
        rows = (
            session.exec(
                select(Execution)
                .where(Execution.project_id == project_id, col(Execution.bundle_id).in_(keys))
                .order_by(*newest_first)
            ).all()
            if keys
            else []
        )
        page = rows[:limit]
        return {
            "runs": [_run_item(e) for e in page],
            "next_cursor": _cursor(page[-1]) if len(rows) > limit else None,
        }


# The trigram text indexes of migration 0002 (keep the expression identical: PostgreSQL matches it textually).
TEXT_EXPRESSION_PG = "(coalesce(route, '') || ' ' || coalesce(error_type, '') || ' ' || coalesce(error_message, ''))"
TEXT_TABLE_SQLITE = "execution_text"
TEXT_CANDIDATES_SQLITE = 5000  # more candidate rows than this: the term is common, walking newest-first is faster
_text_index: dict[str, bool] = {}
NO_MATCH = object()


def _text_candidates(session: Session, engine: Engine, q: str) -> Any:
    """A clause that narrows `q=` to rows a trigram index found, NO_MATCH when it found none, or None (no index).

    Only an accelerator: the exact ILIKE test still runs on every candidate. Trigrams need 3 characters, and
    `%` or `_` in `q` are LIKE wildcards that a trigram index cannot follow, so those scan as before.
    """
    if len(q) < 3 or "%" in q or "_" in q or not _has_text_index(session, engine):
        return None
    if engine.dialect.name == "postgresql":
        return text(f"{TEXT_EXPRESSION_PG} ILIKE :text_pattern").bindparams(text_pattern=f"%{q}%")
    phrase = '"' + q.replace('"', '""') + '"'  # an FTS5 string: the trigram tokenizer matches it as a substring
    count = session.execute(
        text(
            f"SELECT count(*) FROM (SELECT 1 FROM {TEXT_TABLE_SQLITE} WHERE {TEXT_TABLE_SQLITE} MATCH :phrase LIMIT :n)"
        ),
        {"phrase": phrase, "n": TEXT_CANDIDATES_SQLITE},
    ).scalar_one()
    if count == 0:
        return NO_MATCH
    if count >= TEXT_CANDIDATES_SQLITE:
        return None
    return text(
        f"execution.rowid IN (SELECT rowid FROM {TEXT_TABLE_SQLITE} WHERE {TEXT_TABLE_SQLITE} MATCH :text_phrase)"
    ).bindparams(text_phrase=phrase)


def _has_text_index(session: Session, engine: Engine) -> bool:
    key = str(engine.url)
    if key not in _text_index:
        if engine.dialect.name == "postgresql":
            sql = (
                "SELECT count(*) FROM pg_indexes WHERE tablename = 'execution' AND indexname = 'ix_execution_text_trgm'"
            )
        elif engine.dialect.name == "sqlite":
            sql = f"SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '{TEXT_TABLE_SQLITE}'"
        else:
            return False
        _text_index[key] = bool(session.execute(text(sql)).scalar_one())
    return _text_index[key]


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@router.get("/v1/runs/{bundle_id}", summary="One run: summary, IO event index and network list")
def get_run(bundle_id: str, state: State, reader: Workspace, project_id: int | None = None) -> dict[str, Any]:
    with Session(state.engine) as session:
        e = _execution(session, reader, bundle_id, project_id)
        events = e.summary.get("events") or []
        return {
            **_run_item(e),
            "signing_key_id": e.signing_key_id,
            "summary": e.summary,
            "events": events,
            "network": [
                {
                    "seq": ev.get("seq"),
                    "label": ev.get("label"),
                    "status": ev.get("status"),
                    "error_type": ev.get("error_type"),
                    "start_ms": ev.get("start_ms"),
                    "dur_ms": ev.get("dur_ms"),
                }
                for ev in events
                if ev.get("kind") == "http"
            ],
        }


@router.get(
    "/v1/runs/{bundle_id}/bundle",
    summary="The sealed bundle (still encrypted) for the owner's agent, tests and `fluxrun pull`",
    response_class=Response,
    responses={200: {"content": {"application/x-fluxrun-bundle": {}}}},
)
def get_bundle(bundle_id: str, state: State, reader: Workspace, project_id: int | None = None) -> Response:
    with Session(state.engine) as session:
        e = _execution(session, reader, bundle_id, project_id)
    placement = Placement(e.bundle_id, e.object_key, e.object_offset, e.object_length, e.object_sha256)
    data = read_payload(state.store, placement)
    return Response(data, media_type="application/x-fluxrun-bundle", headers={"Cache-Control": "private, no-store"})


def _issue_item(i: Issue) -> dict[str, Any]:
    return {
        "id": i.id,
        "project_id": i.project_id,
        "fingerprint": i.fingerprint,
        "error_type": i.error_type,
        "message": i.message,
        "route": i.route,
        "count": i.count,
        "first_seen": i.first_seen.isoformat(),
        "last_seen": i.last_seen.isoformat(),
        "status": i.status,
    }


@router.get("/v1/projects/{project_id}/issues", summary="Failures grouped by fingerprint")
def list_issues(
    project_id: RowId,
    state: State,
    reader: Workspace,
    status: IssueStatus | None = None,
    sort: Literal["last_seen", "first_seen", "count"] = "last_seen",
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    with Session(state.engine) as session:
        _project(session, reader, project_id)
        query = select(Issue).where(Issue.project_id == project_id)
        if status is not None:
            query = query.where(Issue.status == status)
        order = {"last_seen": Issue.last_seen, "first_seen": Issue.first_seen, "count": Issue.count}[sort]
        rows = session.exec(query.order_by(col(order).desc(), col(Issue.id).desc()).limit(limit)).all()
        return {"issues": [_issue_item(i) for i in rows]}


def _hour_bucket(dialect: str) -> Any:
    """SQL for "the hour a run started in", per dialect (SQLite keeps datetimes as ISO text)."""
    if dialect == "sqlite":
        return func.strftime("%Y-%m-%d %H:00:00", Execution.started_at)
    return func.date_trunc("hour", Execution.started_at)


@router.get(
    "/v1/projects/{project_id}/issues/series",
    summary="Hourly run counts per issue over the last hours (the issue list's sparklines), grouped in SQL",
)
def issue_series(
    project_id: RowId, state: State, reader: Workspace, hours: int = Query(24, ge=1, le=24 * 14)
) -> dict[str, Any]:
    with Session(state.engine) as session:
        _project(session, reader, project_id)
        start = utcnow().replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
        hour = _hour_bucket(state.engine.dialect.name).label("hour")
        rows = session.execute(
            select(Execution.issue_id, hour, func.count())
            .where(
                Execution.project_id == project_id,
                col(Execution.started_at) >= start,
                col(Execution.issue_id).is_not(None),
            )
            .group_by(col(Execution.issue_id), hour)
        ).all()
    series: dict[str, list[int]] = {}
    for issue_id, bucket, count in rows:
        at = _aware(bucket if isinstance(bucket, datetime) else datetime.fromisoformat(str(bucket)))
        index = int((at - start).total_seconds() // 3600)
        if 0 <= index < hours:
            series.setdefault(str(issue_id), [0] * hours)[index] += int(count)
    return {"start": start.isoformat(), "hours": hours, "series": series}


def _issue(session: Session, reader: Reader, issue_id: int) -> Issue:
    return find_issue(session, reader.workspace_id, issue_id)  # another workspace's issue: the same 404


@router.get("/v1/issues/{issue_id}", summary="One issue with its per-hour series and regression runs")
def get_issue(
    issue_id: RowId, state: State, reader: Workspace, hours: int = Query(24, ge=1, le=24 * 14)
) -> dict[str, Any]:
    with Session(state.engine) as session:
        issue = _issue(session, reader, issue_id)
        now = utcnow().replace(minute=0, second=0, microsecond=0)
        start = now - timedelta(hours=hours - 1)
        times = session.exec(
            select(Execution.started_at).where(Execution.issue_id == issue_id, Execution.started_at >= start)
        ).all()
        buckets = {start + timedelta(hours=h): 0 for h in range(hours)}
        for t in times:
            hour = _aware(t).replace(minute=0, second=0, microsecond=0)
            if hour in buckets:
                buckets[hour] += 1
        runs = session.exec(
            select(RegressionRun)
            .where(RegressionRun.issue_id == issue_id)
            .order_by(col(RegressionRun.created_at).desc())
            .limit(50)
        ).all()
        return {
            **_issue_item(issue),
            "series": [{"hour": h.isoformat(), "count": n} for h, n in buckets.items()],
            "regression_runs": [
                {"bundle_id": r.bundle_id, "outcome": r.outcome, "ci": r.ci, "created_at": r.created_at.isoformat()}
                for r in runs
            ],
        }
