"""Control-plane operations by name, for `fluxrun server admin ...`, the demo and the benchmarks.

These resolve `workspace` and `workspace/project` names and then call `fluxrun_server.control.ops` as the server
operator, so the CLI goes through the same operations (checks and audit log) as the management GraphQL API.
Errors are `AdminError` with a message that says what to do.
"""

from __future__ import annotations

from sqlmodel import Session, select

from fluxrun_server.control import ops
from fluxrun_server.control.ops import ROLES, Actor, Issued
from fluxrun_server.control.ops import OperationError as AdminError
from fluxrun_server.index.models import ApiKey, Project, ProjectToken, QuarantinedRecord, SigningKey, Workspace

__all__ = [
    "ROLES",
    "AdminError",
    "Issued",
    "create_api_key",
    "create_project",
    "create_workspace",
    "find_project",
    "find_workspace",
    "issue_token",
    "list_quarantined",
    "register_key",
    "revoke_api_key",
    "revoke_key",
    "revoke_token",
]


def _actor(actor: Actor | None) -> Actor:
    return actor or Actor.operator()


def create_workspace(session: Session, name: str, *, actor: Actor | None = None) -> Workspace:
    return ops.create_workspace(session, _actor(actor), name)


def find_workspace(session: Session, name: str) -> Workspace:
    workspace = session.exec(select(Workspace).where(Workspace.name == name)).first()
    if workspace is None:
        raise AdminError(f"no workspace {name!r}; create it with `fluxrun server admin create-workspace {name}`")
    return workspace


def _workspace_id(session: Session, name: str) -> int:
    workspace = find_workspace(session, name)
    assert workspace.id is not None
    return workspace.id


def create_project(session: Session, workspace_name: str, name: str, *, actor: Actor | None = None) -> Project:
    return ops.create_project(session, _actor(actor), name, _workspace_id(session, workspace_name))


def find_project(session: Session, ref: str) -> Project:
    """A project by `workspace/project` name or by numeric id."""
    if ref.isdigit():
        project = session.get(Project, int(ref))
    else:
        workspace_name, _, name = ref.partition("/")
        if not name:
            raise AdminError(f"{ref!r}: name a project as WORKSPACE/PROJECT (or by its id)")
        workspace = find_workspace(session, workspace_name)
        project = session.exec(
            select(Project).where(Project.workspace_id == workspace.id, Project.name == name)
        ).first()
    if project is None:
        raise AdminError(f"no project {ref!r}; create it with `fluxrun server admin create-project WORKSPACE NAME`")
    return project


def project_id(session: Session, ref: str) -> int:
    project = find_project(session, ref)
    assert project.id is not None
    return project.id


def issue_token(session: Session, project_ref: str, *, kind: str = "ingest", actor: Actor | None = None) -> Issued:
    """An `ingest` token (frt_) or a `ci` token (frc_) for the project."""
    return ops.issue_token(session, _actor(actor), project_id(session, project_ref), kind)


def revoke_token(session: Session, prefix: str, *, actor: Actor | None = None) -> ProjectToken:
    return ops.revoke_token(session, _actor(actor), prefix)


def register_key(session: Session, project_ref: str, public: str, *, actor: Actor | None = None) -> SigningKey:
    """Register a signing public key (`fluxrun keys public capture.key` prints it) for a project."""
    return ops.register_key(session, _actor(actor), project_id(session, project_ref), public)


def revoke_key(session: Session, project_ref: str, key_id: str, *, actor: Actor | None = None) -> SigningKey:
    return ops.revoke_key(session, _actor(actor), project_id(session, project_ref), key_id)


def create_api_key(
    session: Session,
    workspace_name: str,
    name: str,
    role: str | None = "member",
    *,
    member: str | None = None,
    actor: Actor | None = None,
) -> Issued:
    """An API key; with `member`, the member's key (its role defaults to the member's and never exceeds it)."""
    if role is not None and role not in ROLES:
        raise AdminError(f"role {role!r}: use one of {', '.join(ROLES)}")
    return ops.create_api_key(session, _actor(actor), name, role, _workspace_id(session, workspace_name), member)


def revoke_api_key(session: Session, prefix: str, *, actor: Actor | None = None) -> ApiKey:
    return ops.revoke_api_key(session, _actor(actor), prefix)


def list_quarantined(session: Session, project_ref: str | None = None, limit: int = 100) -> list[QuarantinedRecord]:
    """Records the aggregator could not store (newest first), for the operator: what, why, where the bytes are."""
    if not 1 <= limit <= 10_000:
        raise AdminError(f"limit {limit}: give 1 to 10000")
    query = select(QuarantinedRecord).order_by(QuarantinedRecord.id.desc()).limit(limit)  # type: ignore[union-attr]
    if project_ref is not None:
        query = query.where(QuarantinedRecord.project_id == project_id(session, project_ref))
    return list(session.exec(query).all())
