"""Control-plane tables beside the index: members and their roles, the audit log, plans and their
assignment to projects, usage counters per project per day, alert rules and the alert outbox.

Tables of the index (workspaces, projects, tokens, keys) stay in `fluxrun_server.index.models`; this module is
imported by the Alembic environment and by `fluxrun_server.control` so the metadata sees both.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from fluxrun_server.index.models import utcnow

__all__ = [
    "AlertCursor",
    "AlertDelivery",
    "AlertRule",
    "AuditEntry",
    "Member",
    "MemberKey",
    "Plan",
    "ProjectPlan",
    "UsageCounter",
]


class Member(SQLModel, table=True):
    """A person in a workspace with one role: owner, admin, member or viewer."""

    __table_args__ = (UniqueConstraint("workspace_id", "email"),)

    id: int | None = Field(default=None, primary_key=True)
    workspace_id: int = Field(foreign_key="workspace.id", index=True)
    email: str
    role: str
    created_at: datetime = Field(default_factory=utcnow)


class MemberKey(SQLModel, table=True):
    """An API key that belongs to a member: it never ranks above the member, and goes when the member goes."""

    api_key_id: int = Field(foreign_key="apikey.id", primary_key=True)
    member_id: int = Field(foreign_key="member.id", index=True)


class AuditEntry(SQLModel, table=True):
    """One management change: who (API key prefix or operator), what (operation and target), when, from where."""

    __table_args__ = (Index("ix_auditentry_workspace_id_id", "workspace_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    workspace_id: int | None = Field(default=None, foreign_key="workspace.id")
    actor: str
    role: str
    action: str
    target: str
    detail: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    source: str | None = None
    created_at: datetime = Field(default_factory=utcnow)


class Plan(SQLModel, table=True):
    """Limits a project is held to. None means unlimited for that limit."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    bundles_per_day: int | None = None
    retention_days: int | None = None
    max_payload_bytes: int | None = None
    rate_per_second: float | None = None
    burst: int | None = None
    created_at: datetime = Field(default_factory=utcnow)


class ProjectPlan(SQLModel, table=True):
    project_id: int = Field(foreign_key="project.id", primary_key=True)
    plan_id: int = Field(foreign_key="plan.id", index=True)
    changed_at: datetime = Field(default_factory=utcnow)


class UsageCounter(SQLModel, table=True):
    """A counter for one project and UTC day: `accepted`, `bytes`, `rejected:<reason>`, `deleted`, `deleted_bytes`."""

    __table_args__ = (UniqueConstraint("project_id", "day", "metric"),)

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id")
    day: date
    metric: str
    value: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, default=0))


class AlertRule(SQLModel, table=True):
    """When to alert (new_issue, regression, spike above `threshold` executions per hour) and where to."""

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    kind: str
    threshold: int | None = None
    channel: str  # webhook or email
    target: str  # URL or e-mail address
    secret: str | None = None  # webhook HMAC key
    enabled: bool = True
    since_issue_id: int = 0  # new-issue rules fire only for issues created after the rule
    created_at: datetime = Field(default_factory=utcnow)


class AlertDelivery(SQLModel, table=True):
    """The alert outbox: one row per rule and event; pending -> delivered, or dead after the last retry."""

    __table_args__ = (
        UniqueConstraint("rule_id", "event_key"),
        Index("ix_alertdelivery_status_next", "status", "next_attempt_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    rule_id: int = Field(foreign_key="alertrule.id")
    project_id: int = Field(foreign_key="project.id", index=True)
    event_key: str
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = "pending"
    attempts: int = 0
    next_attempt_at: datetime = Field(default_factory=utcnow)
    last_error: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    delivered_at: datetime | None = None


class AlertCursor(SQLModel, table=True):
    """How far the alert scanner has looked (by issue id), so a restart does not skip new issues."""

    name: str = Field(primary_key=True)
    value: int = 0
