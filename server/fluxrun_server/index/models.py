"""The SQL index: control-plane rows (workspaces, projects, tokens, keys) and what a triager queries
(executions with their summary columns, issues grouped by fingerprint, regression runs).

Payloads are never here: an execution points at its bundle in the object store by key, offset and length.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

__all__ = [
    "ApiKey",
    "Execution",
    "Issue",
    "Project",
    "ProjectToken",
    "QuarantinedRecord",
    "RegressionRun",
    "SigningKey",
    "Workspace",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Workspace(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    created_at: datetime = Field(default_factory=utcnow)


class Project(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    workspace_id: int = Field(foreign_key="workspace.id", index=True)
    name: str
    created_at: datetime = Field(default_factory=utcnow)


class ProjectToken(SQLModel, table=True):
    """An ingest token: shown once, stored as a SHA-256 hash, found by its prefix."""

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    prefix: str = Field(index=True, unique=True)
    token_hash: str
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


class SigningKey(SQLModel, table=True):
    """A project's registered Ed25519 public key; bundles signed by it are accepted while it is active."""

    __table_args__ = (UniqueConstraint("project_id", "key_id"),)

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    key_id: str
    public_key: str
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


class ApiKey(SQLModel, table=True):
    """A query key for dashboard and CLI users, scoped to one workspace."""

    id: int | None = Field(default=None, primary_key=True)
    workspace_id: int = Field(foreign_key="workspace.id", index=True)
    name: str
    role: str = "member"
    prefix: str = Field(index=True, unique=True)
    token_hash: str
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


class Issue(SQLModel, table=True):
    """Executions grouped by fingerprint. Status: open, resolved, regressed or guarded."""

    __table_args__ = (
        UniqueConstraint("project_id", "fingerprint"),
        Index("ix_issue_project_last", "project_id", "last_seen"),
    )

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id")
    fingerprint: str
    error_type: str | None = None
    message: str | None = None
    route: str | None = None
    count: int = 0
    first_seen: datetime
    last_seen: datetime
    status: str = "open"
    status_changed_at: datetime | None = None


class Execution(SQLModel, table=True):
    """One captured execution: its plaintext summary columns and where its sealed bundle is stored."""

    __table_args__ = (
        # Every runs-list filter leads into the sort key, so a page is an index walk (migration 0002).
        Index("ix_execution_project_started", "project_id", "started_at", "bundle_id"),
        Index("ix_execution_project_release_started", "project_id", "release", "started_at", "bundle_id"),
        Index("ix_execution_project_error_started", "project_id", "error_type", "started_at", "bundle_id"),
        Index("ix_execution_project_route_started", "project_id", "route", "started_at", "bundle_id"),
        Index("ix_execution_project_issue_started", "project_id", "issue_id", "started_at", "bundle_id"),
        Index("ix_execution_project_outcome_started", "project_id", "outcome", "started_at", "bundle_id"),
    )

    # (bundle id, project) is the key: ids are the app's, unique within a project only (migration 0006)
    bundle_id: str = Field(primary_key=True)
    project_id: int = Field(foreign_key="project.id", primary_key=True)
    issue_id: int | None = Field(default=None, foreign_key="issue.id")
    received_at: datetime = Field(default_factory=utcnow)
    started_at: datetime
    route: str | None = None
    method: str | None = None
    status: int | None = None
    outcome: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    fingerprint: str | None = None
    duration_ms: float | None = None
    release: str | None = None
    environment: str | None = None
    request_id: str | None = None
    trace_id: str | None = None
    signing_key_id: str | None = None
    event_count: int = 0
    summary: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    object_key: str
    object_offset: int
    object_length: int
    object_sha256: str


class RegressionRun(SQLModel, table=True):
    """A CI replay outcome for one bundle: moves its issue to guarded (fixed) or regressed."""

    id: int | None = Field(default=None, primary_key=True)
    project_id: int = Field(foreign_key="project.id", index=True)
    bundle_id: str = Field(index=True)
    issue_id: int | None = Field(default=None, foreign_key="issue.id", index=True)
    outcome: str
    ci: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)


class QuarantinedRecord(SQLModel, table=True):
    """A WAL record the aggregator could not store (a poison record): kept aside so indexing goes on.

    The record's bytes are kept in the object store under `object_key`; the text fields are cut and made
    printable, so a hostile record cannot make this row fail as well (migration 0005).
    """

    __tablename__ = "quarantined_record"
    __table_args__ = (Index("ix_quarantined_record_project_id", "project_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    project_id: int | None = None  # no foreign key: a damaged record may name any number
    bundle_id: str | None = None
    wal_lsn: int = Field(sa_column=Column(BigInteger, nullable=False))
    reason: str
    object_key: str | None = None
    record_bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    record_sha256: str
    quarantined_at: datetime = Field(default_factory=utcnow)
