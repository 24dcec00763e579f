"""Control-plane operations: workspaces, projects, ingest tokens, signing keys and API keys.

One set of functions behind `fluxrun server admin ...` (and, later, the management API), so every way
of changing the control plane goes through the same checks. Errors are `AdminError` with a message
that says what to do.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session, select

from fluxrun.bundle import parse_public_signing_key
from fluxrun.errors import KeyFileError
from fluxrun_server.auth import API_KEY, INGEST_TOKEN, hash_token, new_token, token_prefix
from fluxrun_server.index.models import ApiKey, Project, ProjectToken, SigningKey, Workspace, utcnow

__all__ = [
    "AdminError",
    "create_api_key",
    "create_project",
    "create_workspace",
    "find_project",
    "issue_token",
    "register_key",
    "revoke_api_key",
    "revoke_key",
    "revoke_token",
]

ROLES = ("owner", "admin", "member", "viewer")


class AdminError(Exception):
    """A control-plane operation cannot be done as asked."""


@dataclass(frozen=True)
class Issued:
    secret: str  # shown once; only its hash is stored
    prefix: str


def create_workspace(session: Session, name: str) -> Workspace:
    if session.exec(select(Workspace).where(Workspace.name == name)).first() is not None:
        raise AdminError(f"workspace {name!r} already exists")
    workspace = Workspace(name=name)
    session.add(workspace)
    session.commit()
    session.refresh(workspace)
    return workspace


def find_workspace(session: Session, name: str) -> Workspace:
    workspace = session.exec(select(Workspace).where(Workspace.name == name)).first()
    if workspace is None:
        raise AdminError(f"no workspace {name!r}; create it with `fluxrun server admin create-workspace {name}`")
    return workspace


def create_project(session: Session, workspace_name: str, name: str) -> Project:
    workspace = find_workspace(session, workspace_name)
    if session.exec(select(Project).where(Project.workspace_id == workspace.id, Project.name == name)).first():
        raise AdminError(f"project {workspace_name}/{name} already exists")
    project = Project(workspace_id=workspace.id, name=name)  # type: ignore[arg-type]
    session.add(project)
    session.commit()
    session.refresh(project)
    return project


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


def issue_token(session: Session, project_ref: str) -> Issued:
    project = find_project(session, project_ref)
    secret = new_token(INGEST_TOKEN)
    session.add(ProjectToken(project_id=project.id, prefix=token_prefix(secret), token_hash=hash_token(secret)))  # type: ignore[arg-type]
    session.commit()
    return Issued(secret, token_prefix(secret))


def revoke_token(session: Session, prefix: str) -> ProjectToken:
    token = session.exec(select(ProjectToken).where(ProjectToken.prefix == prefix[:12])).first()
    if token is None:
        raise AdminError(f"no ingest token with prefix {prefix[:12]!r}")
    token.revoked_at = token.revoked_at or utcnow()
    session.add(token)
    session.commit()
    return token


def register_key(session: Session, project_ref: str, public: str) -> SigningKey:
    """Register a signing public key (`fluxrun keys public capture.key` prints it) for a project."""
    project = find_project(session, project_ref)
    try:
        key_id, key = parse_public_signing_key(public)
    except KeyFileError as exc:
        raise AdminError(str(exc)) from None
    import base64

    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    existing = session.exec(
        select(SigningKey).where(SigningKey.project_id == project.id, SigningKey.key_id == key_id)
    ).first()
    if existing is not None:
        if existing.revoked_at is not None:
            raise AdminError(f"signing key {key_id} was revoked for this project; generate new keys instead")
        return existing
    row = SigningKey(project_id=project.id, key_id=key_id, public_key=raw)  # type: ignore[arg-type]
    session.add(row)
    session.commit()
    session.refresh(row)
    return row


def revoke_key(session: Session, project_ref: str, key_id: str) -> SigningKey:
    project = find_project(session, project_ref)
    row = session.exec(
        select(SigningKey).where(SigningKey.project_id == project.id, SigningKey.key_id == key_id)
    ).first()
    if row is None:
        raise AdminError(f"project {project_ref} has no signing key {key_id}")
    row.revoked_at = row.revoked_at or utcnow()
    session.add(row)
    session.commit()
    return row


def create_api_key(session: Session, workspace_name: str, name: str, role: str = "member") -> Issued:
    if role not in ROLES:
        raise AdminError(f"role {role!r}: use one of {', '.join(ROLES)}")
    workspace = find_workspace(session, workspace_name)
    assert workspace.id is not None
    secret = new_token(API_KEY)
    session.add(
        ApiKey(
            workspace_id=workspace.id, name=name, role=role, prefix=token_prefix(secret), token_hash=hash_token(secret)
        )
    )
    session.commit()
    return Issued(secret, token_prefix(secret))


def revoke_api_key(session: Session, prefix: str) -> ApiKey:
    key = session.exec(select(ApiKey).where(ApiKey.prefix == prefix[:12])).first()
    if key is None:
        raise AdminError(f"no API key with prefix {prefix[:12]!r}")
    key.revoked_at = key.revoked_at or utcnow()
    session.add(key)
    session.commit()
    return key
