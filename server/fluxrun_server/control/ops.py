"""Every management operation, authorised by role and written to the audit log in the same transaction.

GraphQL (`/v1/graphql`), the `fluxrun server admin` CLI and the dashboard's settings pages call these
functions, so the checks are the same whichever way a change comes in. An `Actor` says who asks: a workspace
API key with its role, or the server operator (the CLI, which holds the database credentials and may act on
any workspace). Anything outside the actor's workspace is reported as not found, never as forbidden, so ids of
other workspaces cannot be probed.

Roles, from least to most: viewer (reads), member (+ alert rules), admin (+ projects, ingest and CI tokens,
signing keys with their revocation and rotation, API keys, members, audit log, dead letters), owner (+ owners
and plans). Tokens and signing keys are the ingest trust anchor, so minting and registering them needs the
same role as revoking them.
"""

from __future__ import annotations

import base64
import getpass
import secrets
import socket
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import func
from sqlmodel import Session, col, select

from fluxrun.bundle import parse_public_signing_key
from fluxrun.errors import KeyFileError
from fluxrun_server.auth import API_KEY, CI_TOKEN, INGEST_TOKEN, hash_token, new_token, token_prefix
from fluxrun_server.control.egress import TargetRefused, check_target
from fluxrun_server.control.models import (
    AlertDelivery,
    AlertRule,
    AuditEntry,
    Member,
    MemberKey,
    Plan,
    ProjectPlan,
    UsageCounter,
)
from fluxrun_server.control.settings import ControlSettings
from fluxrun_server.index.models import ApiKey, Issue, Project, ProjectToken, SigningKey, Workspace, utcnow

__all__ = [
    "ALERT_KINDS",
    "ROLES",
    "TOKEN_KINDS",
    "Actor",
    "Forbidden",
    "Issued",
    "NotFound",
    "OperationError",
    "rank",
]

ROLES = ("viewer", "member", "admin", "owner")
TOKEN_KINDS = {"ingest": INGEST_TOKEN, "ci": CI_TOKEN}  # what a project token is for, by name
OPERATOR = "operator"
ALERT_KINDS = ("new_issue", "regression", "spike")
CHANNELS = ("webhook", "email")


class OperationError(Exception):
    """A management operation cannot be done as asked; the message says what to change."""

    code = "BAD_REQUEST"


class Forbidden(OperationError):
    code = "FORBIDDEN"


class NotFound(OperationError):
    code = "NOT_FOUND"


def rank(role: str) -> int:
    if role == OPERATOR:
        return len(ROLES)
    return ROLES.index(role) if role in ROLES else -1


@dataclass(frozen=True)
class Actor:
    """Who asks: `who` names them in the audit log (an API key prefix or `cli:user@host`), `source` is from where."""

    who: str
    role: str
    workspace_id: int | None  # None only for the operator
    source: str | None = None

    @classmethod
    def operator(cls) -> Actor:
        try:
            user = getpass.getuser()
        except OSError:  # no user name in the environment or the password database (some containers)
            user = "unknown"
        return cls(f"cli:{user}@{socket.gethostname()}", OPERATOR, None, "cli")

    @property
    def is_operator(self) -> bool:
        return self.role == OPERATOR


@dataclass(frozen=True)
class Issued:
    secret: str  # shown once; only its hash is stored
    prefix: str


def _require(actor: Actor, role: str, what: str) -> None:
    if rank(actor.role) < rank(role):
        raise Forbidden(f"{what} needs the {role} role or higher; this key's role is {actor.role}")


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise OperationError(f"role {role!r}: use one of {', '.join(ROLES)}")
    return role


def _audit(session: Session, actor: Actor, workspace_id: int | None, action: str, target: str, **detail: Any) -> None:
    session.add(
        AuditEntry(
            workspace_id=workspace_id,
            actor=actor.who,
            role=actor.role,
            action=action,
            target=target,
            detail=detail,
            source=actor.source,
        )
    )


def _workspace_id(actor: Actor, workspace_id: int | None) -> int:
    """The workspace an operation is about: the actor's own, or (operator only) the one named."""
    if actor.workspace_id is not None:
        if workspace_id is not None and workspace_id != actor.workspace_id:
            raise NotFound(f"no workspace {workspace_id}")
        return actor.workspace_id
    if workspace_id is None:
        raise OperationError("name the workspace")
    return workspace_id


def project(session: Session, actor: Actor, project_id: int) -> Project:
    row = session.get(Project, project_id)
    if row is None or (actor.workspace_id is not None and row.workspace_id != actor.workspace_id):
        raise NotFound(f"no project {project_id}")
    return row


# -- workspaces and projects ---------------------------------------------------------------------------


def create_workspace(session: Session, actor: Actor, name: str) -> Workspace:
    if not actor.is_operator:
        raise Forbidden("workspaces are created by the server operator (`fluxrun server admin create-workspace`)")
    name = name.strip()
    if not name or "/" in name:
        raise OperationError(f"workspace name {name!r}: give a non-empty name without '/'")
    if session.exec(select(Workspace).where(Workspace.name == name)).first() is not None:
        raise OperationError(f"workspace {name!r} already exists")
    row = Workspace(name=name)
    session.add(row)
    session.flush()
    _audit(session, actor, row.id, "workspace.create", f"workspace:{name}")
    session.commit()
    session.refresh(row)
    return row


def get_workspace(session: Session, actor: Actor, workspace_id: int | None = None) -> Workspace:
    row = session.get(Workspace, _workspace_id(actor, workspace_id))
    if row is None:
        raise NotFound(f"no workspace {workspace_id}")
    return row


def create_project(session: Session, actor: Actor, name: str, workspace_id: int | None = None) -> Project:
    _require(actor, "admin", "creating a project")
    ws = get_workspace(session, actor, workspace_id)
    name = name.strip()
    if not name or "/" in name:
        raise OperationError(f"project name {name!r}: give a non-empty name without '/'")
    if session.exec(select(Project).where(Project.workspace_id == ws.id, Project.name == name)).first():
        raise OperationError(f"project {ws.name}/{name} already exists")
    row = Project(workspace_id=ws.id, name=name)  # type: ignore[arg-type]
    session.add(row)
    session.flush()
    _audit(session, actor, ws.id, "project.create", f"project:{row.id}", name=name)
    session.commit()
    session.refresh(row)
    return row


def list_projects(session: Session, actor: Actor, workspace_id: int | None = None) -> list[Project]:
    ws = _workspace_id(actor, workspace_id)
    return list(session.exec(select(Project).where(Project.workspace_id == ws).order_by(col(Project.id))).all())


# -- ingest tokens ---------------------------------------------------------------------------------------


def issue_token(session: Session, actor: Actor, project_id: int, kind: str = "ingest") -> Issued:
    """A project token: `ingest` (frt_, the app ships bundles with it) or `ci` (frc_, CI reports replay
    outcomes with it; an ingest token cannot, so an app host cannot mark regressions guarded)."""
    if kind not in TOKEN_KINDS:
        raise OperationError(f"token kind {kind!r}: use one of {', '.join(TOKEN_KINDS)}")
    _require(actor, "admin", f"minting an {kind} token")
    row = project(session, actor, project_id)
    secret = new_token(TOKEN_KINDS[kind])
    session.add(ProjectToken(project_id=project_id, prefix=token_prefix(secret), token_hash=hash_token(secret)))
    target = f"project:{project_id}"
    _audit(session, actor, row.workspace_id, "token.create", target, prefix=token_prefix(secret), kind=kind)
    session.commit()
    return Issued(secret, token_prefix(secret))


def list_tokens(
    session: Session, actor: Actor, project_id: int | None = None, prefix: str | None = None
) -> list[ProjectToken]:
    query = select(ProjectToken).join(Project, col(Project.id) == ProjectToken.project_id)
    if actor.workspace_id is not None:
        query = query.where(Project.workspace_id == actor.workspace_id)
    if project_id is not None:
        project(session, actor, project_id)
        query = query.where(ProjectToken.project_id == project_id)
    if prefix:
        query = query.where(col(ProjectToken.prefix).startswith(prefix[:12]))
    return list(session.exec(query.order_by(col(ProjectToken.id))).all())


def revoke_token(session: Session, actor: Actor, prefix: str) -> ProjectToken:
    _require(actor, "admin", "revoking an ingest token")
    token = session.exec(select(ProjectToken).where(ProjectToken.prefix == prefix[:12])).first()
    owner = session.get(Project, token.project_id) if token is not None else None
    if token is None or owner is None or (actor.workspace_id is not None and owner.workspace_id != actor.workspace_id):
        raise NotFound(f"no ingest token with prefix {prefix[:12]!r}")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        session.add(token)
        _audit(session, actor, owner.workspace_id, "token.revoke", f"project:{owner.id}", prefix=token.prefix)
        session.commit()
    return token


# -- signing keys ----------------------------------------------------------------------------------------


def _parse_key(public: str) -> tuple[str, str]:
    try:
        key_id, key = parse_public_signing_key(public)
    except KeyFileError as exc:
        raise OperationError(str(exc)) from None
    return key_id, base64.b64encode(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def _refuse_foreign_key(session: Session, workspace_id: int, key_id: str, raw: str) -> None:
    """A public key is not a secret: anyone can register it. Active in one workspace, it may not be
    registered in another, or that workspace could pass the first one's bundles off as its own. The message
    names no workspace; it says only that the key is taken."""
    taken = session.exec(
        select(SigningKey.id)
        .join(Project, col(Project.id) == SigningKey.project_id)
        .where(SigningKey.public_key == raw, col(SigningKey.revoked_at).is_(None), Project.workspace_id != workspace_id)
    ).first()
    if taken is not None:
        raise OperationError(
            f"signing key {key_id} is active in another workspace and cannot be registered here; generate a new "
            "key pair for this project (`fluxrun keys generate DIR`). If the key is yours, revoke it there first"
        )


def register_key(session: Session, actor: Actor, project_id: int, public: str) -> SigningKey:
    """Register a signing public key (`fluxrun keys public capture.key` prints it) for a project."""
    _require(actor, "admin", "registering a signing key")
    owner = project(session, actor, project_id)
    key_id, raw = _parse_key(public)
    _refuse_foreign_key(session, owner.workspace_id, key_id, raw)
    existing = session.exec(
        select(SigningKey).where(SigningKey.project_id == project_id, SigningKey.key_id == key_id)
    ).first()
    if existing is not None:
        if existing.revoked_at is not None:
            raise OperationError(f"signing key {key_id} was revoked for this project; generate new keys instead")
        return existing
    row = SigningKey(project_id=project_id, key_id=key_id, public_key=raw)
    session.add(row)
    _audit(session, actor, owner.workspace_id, "signing_key.register", f"project:{project_id}", key_id=key_id)
    session.commit()
    session.refresh(row)
    return row


def revoke_key(session: Session, actor: Actor, project_id: int, key_id: str) -> SigningKey:
    _require(actor, "admin", "revoking a signing key")
    owner = project(session, actor, project_id)
    row = session.exec(
        select(SigningKey).where(SigningKey.project_id == project_id, SigningKey.key_id == key_id)
    ).first()
    if row is None:
        raise NotFound(f"project {project_id} has no signing key {key_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.add(row)
        _audit(session, actor, owner.workspace_id, "signing_key.revoke", f"project:{project_id}", key_id=key_id)
        session.commit()
    return row


def rotate_key(session: Session, actor: Actor, project_id: int, public: str, old_key_id: str) -> SigningKey:
    """Register the new key and revoke the old one in one transaction: bundles signed by the old key stop."""
    _require(actor, "admin", "rotating a signing key")
    owner = project(session, actor, project_id)
    key_id, raw = _parse_key(public)
    if key_id == old_key_id:
        raise OperationError("the new key has the same id as the old one; generate a new key pair first")
    _refuse_foreign_key(session, owner.workspace_id, key_id, raw)
    old = session.exec(
        select(SigningKey).where(SigningKey.project_id == project_id, SigningKey.key_id == old_key_id)
    ).first()
    if old is None or old.revoked_at is not None:
        raise NotFound(f"project {project_id} has no active signing key {old_key_id}")
    if session.exec(select(SigningKey).where(SigningKey.project_id == project_id, SigningKey.key_id == key_id)).first():
        raise OperationError(f"signing key {key_id} is already registered for this project")
    old.revoked_at = utcnow()
    new = SigningKey(project_id=project_id, key_id=key_id, public_key=raw)
    session.add(old)
    session.add(new)
    target = f"project:{project_id}"
    _audit(session, actor, owner.workspace_id, "signing_key.rotate", target, old=old_key_id, new=key_id)
    session.commit()
    session.refresh(new)
    return new


def list_keys(session: Session, actor: Actor, project_id: int) -> list[SigningKey]:
    project(session, actor, project_id)
    return list(
        session.exec(select(SigningKey).where(SigningKey.project_id == project_id).order_by(col(SigningKey.id))).all()
    )


# -- API keys and members ----------------------------------------------------------------------------------


def _grantable(actor: Actor, role: str, what: str) -> None:
    if rank(role) > rank(actor.role):
        raise Forbidden(f"{what} with role {role} needs that role or higher; this key's role is {actor.role}")


def create_api_key(
    session: Session,
    actor: Actor,
    name: str,
    role: str | None = None,
    workspace_id: int | None = None,
    member: str | None = None,
) -> Issued:
    """An API key, optionally a member's: then its role defaults to, and may not exceed, the member's role."""
    _require(actor, "admin", "creating an API key")
    owner = _member(session, actor, member, workspace_id) if member else None
    role = _check_role(role or (owner.role if owner else "member"))
    _grantable(actor, role, "an API key")
    if owner is not None and rank(role) > rank(owner.role):
        raise OperationError(f"{owner.email} is {owner.role}; their API key cannot be {role}")
    ws = get_workspace(session, actor, workspace_id)
    secret = new_token(API_KEY)
    key = ApiKey(workspace_id=ws.id, name=name, role=role, prefix=token_prefix(secret), token_hash=hash_token(secret))  # type: ignore[arg-type]
    session.add(key)
    session.flush()
    if owner is not None:
        session.add(MemberKey(api_key_id=key.id, member_id=owner.id))  # type: ignore[arg-type]
    detail = {"name": name, "role": role, **({"member": owner.email} if owner else {})}
    _audit(session, actor, ws.id, "api_key.create", f"api_key:{token_prefix(secret)}", **detail)
    session.commit()
    return Issued(secret, token_prefix(secret))


def member_keys(session: Session, member: Member) -> list[ApiKey]:
    return list(
        session.exec(
            select(ApiKey)
            .join(MemberKey, col(MemberKey.api_key_id) == ApiKey.id)
            .where(MemberKey.member_id == member.id, col(ApiKey.revoked_at).is_(None))
        ).all()
    )


def key_members(session: Session, keys: list[ApiKey]) -> dict[int, str]:
    """Which member (e-mail) each of these API keys belongs to, by key id."""
    ids = [k.id for k in keys if k.id is not None]
    if not ids:
        return {}
    rows = session.exec(
        select(MemberKey.api_key_id, Member.email)
        .join(Member, col(Member.id) == MemberKey.member_id)
        .where(col(MemberKey.api_key_id).in_(ids))
    ).all()
    return {int(key_id): str(email) for key_id, email in rows}


def list_api_keys(session: Session, actor: Actor, workspace_id: int | None = None) -> list[ApiKey]:
    ws = _workspace_id(actor, workspace_id)
    return list(session.exec(select(ApiKey).where(ApiKey.workspace_id == ws).order_by(col(ApiKey.id))).all())


def revoke_api_key(session: Session, actor: Actor, prefix: str) -> ApiKey:
    _require(actor, "admin", "revoking an API key")
    key = session.exec(select(ApiKey).where(ApiKey.prefix == prefix[:12])).first()
    if key is None or (actor.workspace_id is not None and key.workspace_id != actor.workspace_id):
        raise NotFound(f"no API key with prefix {prefix[:12]!r}")
    _grantable(actor, key.role, "revoking an API key")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.add(key)
        _audit(session, actor, key.workspace_id, "api_key.revoke", f"api_key:{key.prefix}", name=key.name)
        session.commit()
    return key


def list_members(session: Session, actor: Actor, workspace_id: int | None = None) -> list[Member]:
    ws = _workspace_id(actor, workspace_id)
    return list(session.exec(select(Member).where(Member.workspace_id == ws).order_by(col(Member.id))).all())


def _member(session: Session, actor: Actor, email: str, workspace_id: int | None = None) -> Member:
    ws = _workspace_id(actor, workspace_id)
    row = session.exec(select(Member).where(Member.workspace_id == ws, Member.email == email.strip().lower())).first()
    if row is None:
        raise NotFound(f"no member {email!r} in this workspace")
    return row


def _owners(session: Session, workspace_id: int) -> int:
    return int(
        session.exec(
            select(func.count()).select_from(Member).where(Member.workspace_id == workspace_id, Member.role == "owner")
        ).one()
    )


def add_member(session: Session, actor: Actor, email: str, role: str, workspace_id: int | None = None) -> Member:
    _require(actor, "admin", "adding a member")
    _check_role(role)
    _grantable(actor, role, "adding a member")
    ws = get_workspace(session, actor, workspace_id)
    email = email.strip().lower()
    if "@" not in email:
        raise OperationError(f"{email!r} is not an e-mail address")
    if session.exec(select(Member).where(Member.workspace_id == ws.id, Member.email == email)).first():
        raise OperationError(f"{email} is already a member of {ws.name}")
    row = Member(workspace_id=ws.id, email=email, role=role)  # type: ignore[arg-type]
    session.add(row)
    _audit(session, actor, ws.id, "member.add", f"member:{email}", role=role)
    session.commit()
    session.refresh(row)
    return row


def change_member_role(
    session: Session, actor: Actor, email: str, role: str, workspace_id: int | None = None
) -> Member:
    _require(actor, "admin", "changing a member's role")
    _check_role(role)
    row = _member(session, actor, email, workspace_id)
    _grantable(actor, row.role, "changing a member")
    _grantable(actor, role, "changing a member")
    if row.role == "owner" and role != "owner" and _owners(session, row.workspace_id) == 1:
        raise OperationError(f"{row.email} is the last owner; make someone else owner first")
    old, row.role = row.role, role
    session.add(row)
    capped = []
    for key in member_keys(session, row):
        if rank(key.role) > rank(role):  # a member's keys never rank above the member
            key.role = role
            session.add(key)
            capped.append(key.prefix)
    _audit(session, actor, row.workspace_id, "member.role", f"member:{row.email}", old=old, new=role, keys=capped)
    session.commit()
    session.refresh(row)
    return row


def remove_member(session: Session, actor: Actor, email: str, workspace_id: int | None = None) -> Member:
    _require(actor, "admin", "removing a member")
    row = _member(session, actor, email, workspace_id)
    _grantable(actor, row.role, "removing a member")
    if row.role == "owner" and _owners(session, row.workspace_id) == 1:
        raise OperationError(f"{row.email} is the last owner; make someone else owner first")
    revoked = []
    for key in member_keys(session, row):  # the member's keys go with them
        key.revoked_at = utcnow()
        session.add(key)
        revoked.append(key.prefix)
    for link in session.exec(select(MemberKey).where(MemberKey.member_id == row.id)).all():
        session.delete(link)
    session.flush()
    session.delete(row)
    _audit(session, actor, row.workspace_id, "member.remove", f"member:{row.email}", role=row.role, keys=revoked)
    session.commit()
    return row


# -- plans ----------------------------------------------------------------------------------------------------

PLAN_LIMITS = ("bundles_per_day", "retention_days", "max_payload_bytes", "rate_per_second", "burst")


def create_plan(session: Session, actor: Actor, name: str, **limits: Any) -> Plan:
    """Plans are the server's billing state: defined by the operator, chosen for a project by its owner."""
    if not actor.is_operator:
        raise Forbidden("plans are defined by the server operator (`fluxrun server admin create-plan`)")
    unknown = set(limits) - set(PLAN_LIMITS)
    if unknown:
        raise OperationError(f"unknown plan limits {sorted(unknown)}; use {', '.join(PLAN_LIMITS)}")
    for key, value in limits.items():
        if value is not None and value <= 0:
            raise OperationError(f"{key} must be positive (leave it out for no limit)")
    row = session.exec(select(Plan).where(Plan.name == name)).first()
    action = "plan.update" if row else "plan.create"
    row = row or Plan(name=name)
    for key, value in limits.items():
        setattr(row, key, value)
    session.add(row)
    _audit(session, actor, None, action, f"plan:{name}", **limits)
    session.commit()
    session.refresh(row)
    return row


def list_plans(session: Session) -> list[Plan]:
    return list(session.exec(select(Plan).order_by(col(Plan.id))).all())


def project_plan(session: Session, project_id: int) -> Plan | None:
    link = session.get(ProjectPlan, project_id)
    return session.get(Plan, link.plan_id) if link is not None else None


def set_project_plan(session: Session, actor: Actor, project_id: int, plan_name: str) -> Plan:
    _require(actor, "owner", "choosing a project's plan")
    owner = project(session, actor, project_id)
    plan = session.exec(select(Plan).where(Plan.name == plan_name)).first()
    if plan is None:
        names = ", ".join(p.name for p in list_plans(session)) or "none defined yet"
        raise NotFound(f"no plan {plan_name!r} (plans: {names})")
    link = session.get(ProjectPlan, project_id) or ProjectPlan(project_id=project_id, plan_id=plan.id)  # type: ignore[arg-type]
    link.plan_id, link.changed_at = plan.id, utcnow()  # type: ignore[assignment]
    session.add(link)
    _audit(session, actor, owner.workspace_id, "project.plan", f"project:{project_id}", plan=plan_name)
    session.commit()
    return plan


# -- alert rules and deliveries ------------------------------------------------------------------------------


def create_alert_rule(
    session: Session,
    actor: Actor,
    project_id: int,
    kind: str,
    channel: str,
    target: str,
    threshold: int | None = None,
) -> AlertRule:
    """A rule; a webhook rule gets an HMAC secret (readable by admins, used to check `X-FluxRun-Signature`)."""
    _require(actor, "member", "creating an alert rule")
    owner = project(session, actor, project_id)
    if kind not in ALERT_KINDS:
        raise OperationError(f"alert kind {kind!r}: use one of {', '.join(ALERT_KINDS)}")
    if channel not in CHANNELS:
        raise OperationError(f"alert channel {channel!r}: use webhook or email")
    if kind == "spike" and (threshold is None or threshold < 1):
        raise OperationError("a spike rule needs a threshold: executions of one issue per hour, at least 1")
    if channel == "webhook":
        try:  # public addresses only, unless the operator allows private ones (SSRF; control/egress.py)
            check_target(target, allow_private=ControlSettings().webhook_allow_private)
        except TargetRefused as exc:
            raise OperationError(str(exc)) from None
    if channel == "email" and "@" not in target:
        raise OperationError(f"email target {target!r} is not an e-mail address")
    latest = session.exec(select(func.max(Issue.id)).where(Issue.project_id == project_id)).one()
    rule = AlertRule(
        project_id=project_id,
        kind=kind,
        threshold=threshold,
        channel=channel,
        target=target,
        secret=secrets.token_urlsafe(32) if channel == "webhook" else None,
        since_issue_id=int(latest or 0),
    )
    session.add(rule)
    session.flush()
    _audit(session, actor, owner.workspace_id, "alert_rule.create", f"alert_rule:{rule.id}", kind=kind, channel=channel)
    session.commit()
    session.refresh(rule)
    return rule


def _rule(session: Session, actor: Actor, rule_id: int) -> tuple[AlertRule, Project]:
    rule = session.get(AlertRule, rule_id)
    if rule is None:
        raise NotFound(f"no alert rule {rule_id}")
    try:
        return rule, project(session, actor, rule.project_id)
    except NotFound:
        raise NotFound(f"no alert rule {rule_id}") from None


def set_alert_rule_enabled(session: Session, actor: Actor, rule_id: int, enabled: bool) -> AlertRule:
    _require(actor, "member", "changing an alert rule")
    rule, owner = _rule(session, actor, rule_id)
    rule.enabled = enabled
    session.add(rule)
    _audit(session, actor, owner.workspace_id, "alert_rule.update", f"alert_rule:{rule_id}", enabled=enabled)
    session.commit()
    session.refresh(rule)
    return rule


def delete_alert_rule(session: Session, actor: Actor, rule_id: int) -> None:
    _require(actor, "member", "deleting an alert rule")
    rule, owner = _rule(session, actor, rule_id)
    rule.enabled = False  # kept (disabled) so its deliveries and dead letters stay readable
    rule.kind = f"deleted:{rule.kind}"
    session.add(rule)
    _audit(session, actor, owner.workspace_id, "alert_rule.delete", f"alert_rule:{rule_id}")
    session.commit()


def list_alert_rules(session: Session, actor: Actor, project_id: int) -> list[AlertRule]:
    project(session, actor, project_id)
    return list(
        session.exec(
            select(AlertRule)
            .where(AlertRule.project_id == project_id, col(AlertRule.kind).in_(ALERT_KINDS))
            .order_by(col(AlertRule.id))
        ).all()
    )


def deliveries(
    session: Session, actor: Actor, status: str = "dead", project_id: int | None = None, limit: int = 100
) -> list[AlertDelivery]:
    _require(actor, "admin", "reading alert deliveries and dead letters")
    query = select(AlertDelivery).join(Project, col(Project.id) == AlertDelivery.project_id)
    if actor.workspace_id is not None:
        query = query.where(Project.workspace_id == actor.workspace_id)
    if project_id is not None:
        project(session, actor, project_id)
        query = query.where(AlertDelivery.project_id == project_id)
    query = query.where(AlertDelivery.status == status)
    return list(session.exec(query.order_by(col(AlertDelivery.id).desc()).limit(min(limit, 1000))).all())


def retry_delivery(session: Session, actor: Actor, delivery_id: int) -> AlertDelivery:
    _require(actor, "admin", "retrying a dead letter")
    row = session.get(AlertDelivery, delivery_id)
    owner = session.get(Project, row.project_id) if row is not None else None
    if row is None or owner is None or (actor.workspace_id is not None and owner.workspace_id != actor.workspace_id):
        raise NotFound(f"no alert delivery {delivery_id}")
    if row.status != "dead":
        raise OperationError(f"delivery {delivery_id} is {row.status}, not dead")
    row.status, row.attempts, row.next_attempt_at = "pending", 0, utcnow()
    session.add(row)
    _audit(session, actor, owner.workspace_id, "alert_delivery.retry", f"alert_delivery:{delivery_id}")
    session.commit()
    session.refresh(row)
    return row


# -- audit log and usage ---------------------------------------------------------------------------------------


def audit_log(
    session: Session, actor: Actor, limit: int = 100, before_id: int | None = None, workspace_id: int | None = None
) -> list[AuditEntry]:
    _require(actor, "admin", "reading the audit log")
    query = select(AuditEntry)
    if actor.workspace_id is not None or workspace_id is not None:
        query = query.where(AuditEntry.workspace_id == _workspace_id(actor, workspace_id))
    if before_id is not None:
        query = query.where(col(AuditEntry.id) < before_id)
    return list(session.exec(query.order_by(col(AuditEntry.id).desc()).limit(max(1, min(limit, 1000)))).all())


@dataclass(frozen=True)
class UsageDay:
    project_id: int
    day: date
    accepted: int
    bytes: int
    rejected: dict[str, int]
    deleted: int
    deleted_bytes: int


def usage(
    session: Session, actor: Actor, project_id: int, since: date | None = None, until: date | None = None
) -> list[UsageDay]:
    """Counters per UTC day, oldest first; `since` defaults to 30 days ago, `until` (inclusive) to today."""
    project(session, actor, project_id)
    until = until or utcnow().date()
    since = since or until - timedelta(days=29)
    if since > until:
        raise OperationError("since is after until")
    rows = session.exec(
        select(UsageCounter).where(
            UsageCounter.project_id == project_id, UsageCounter.day >= since, UsageCounter.day <= until
        )
    ).all()
    days: dict[date, dict[str, int]] = {}
    for row in rows:
        days.setdefault(row.day, {})[row.metric] = row.value
    out = []
    for day in sorted(days):
        metrics = days[day]
        out.append(
            UsageDay(
                project_id=project_id,
                day=day,
                accepted=metrics.get("accepted", 0),
                bytes=metrics.get("bytes", 0),
                rejected={k.partition(":")[2]: v for k, v in sorted(metrics.items()) if k.startswith("rejected:")},
                deleted=metrics.get("deleted", 0),
                deleted_bytes=metrics.get("deleted_bytes", 0),
            )
        )
    return out


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
