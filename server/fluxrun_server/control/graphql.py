"""The management GraphQL API at `/v1/graphql` (Strawberry), over the operations of `control.ops`.

Every request needs a workspace API key (`Authorization: Bearer fra_...`); its role authorises each field
in `control.ops`, and everything is scoped to its workspace. Errors come back as GraphQL errors whose
`extensions.code` is FORBIDDEN, NOT_FOUND or BAD_REQUEST. Database work runs in a worker thread so a
management request never holds up the event loop that acknowledges ingest.
"""

from collections.abc import Callable
from datetime import date, datetime
from typing import Any, TypeVar, cast

import strawberry
from fastapi import HTTPException, Request
from graphql import GraphQLError
from graphql.validation import NoSchemaIntrospectionCustomRule
from sqlalchemy import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from strawberry.extensions import AddValidationRules, MaxAliasesLimiter, MaxTokensLimiter, QueryDepthLimiter
from strawberry.fastapi import BaseContext, GraphQLRouter
from strawberry.scalars import JSON

from fluxrun_server.auth import API_KEY, TokenError, check_token, token_prefix
from fluxrun_server.control import models as m
from fluxrun_server.control import ops
from fluxrun_server.index import models as im

__all__ = ["router"]

T = TypeVar("T")


class Context(BaseContext):
    def __init__(self, actor: ops.Actor, engine: Engine) -> None:
        super().__init__()
        self.actor = actor
        self.engine = engine

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Call an operation with a fresh session in a worker thread; map its errors to GraphQL errors."""

        def call() -> T:
            with Session(self.engine, expire_on_commit=False) as session:
                return fn(session, self.actor, *args, **kwargs)

        try:
            return await run_in_threadpool(call)
        except ops.OperationError as exc:
            raise GraphQLError(str(exc), extensions={"code": exc.code}) from None


Info = strawberry.Info[Context, None]


async def context_getter(request: Request) -> Context:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value:
        raise HTTPException(401, "missing credentials: send Authorization: Bearer <API key>")
    try:
        token = check_token(value.strip(), API_KEY)
    except TokenError as exc:
        raise HTTPException(401, f"cannot use the management API: {exc}") from None
    state = request.app.state.fluxrun
    found = state.api_key(token, token_prefix(token))
    if found is None:
        raise HTTPException(401, "API key is unknown or revoked")
    workspace_id, role = found
    source = request.client.host if request.client else None
    return Context(ops.Actor(f"apikey:{token_prefix(token)}", role, workspace_id, source), state.engine)


# -- types -----------------------------------------------------------------------------------------------


@strawberry.type
class Workspace:
    id: int
    name: str
    created_at: datetime


@strawberry.type
class Plan:
    id: int
    name: str
    bundles_per_day: int | None
    retention_days: int | None
    max_payload_bytes: int | None
    rate_per_second: float | None
    burst: int | None

    @staticmethod
    def of(row: m.Plan) -> "Plan":
        return Plan(
            id=row.id or 0,
            name=row.name,
            bundles_per_day=row.bundles_per_day,
            retention_days=row.retention_days,
            max_payload_bytes=row.max_payload_bytes,
            rate_per_second=row.rate_per_second,
            burst=row.burst,
        )


@strawberry.type
class Project:
    id: int
    name: str
    workspace_id: int
    created_at: datetime
    plan: Plan | None


@strawberry.type
class Token:
    prefix: str
    project_id: int
    created_at: datetime
    revoked_at: datetime | None


@strawberry.type
class SigningKey:
    key_id: str
    project_id: int
    public_key: str
    created_at: datetime
    revoked_at: datetime | None


@strawberry.type
class ApiKey:
    prefix: str
    name: str
    role: str
    created_at: datetime
    revoked_at: datetime | None
    member: str | None = strawberry.field(description="the member it belongs to, if any")


@strawberry.type
class Issued:
    """A new secret: shown only in this answer; the server keeps its hash."""

    secret: str
    prefix: str


@strawberry.type
class Member:
    email: str
    role: str
    created_at: datetime


@strawberry.type
class AlertRule:
    id: int
    project_id: int
    kind: str
    channel: str
    target: str
    threshold: int | None
    enabled: bool
    created_at: datetime
    secret: str | None = strawberry.field(description="webhook HMAC key; shown to admins and owners only")


@strawberry.type
class Delivery:
    id: int
    rule_id: int
    project_id: int
    event_key: str
    status: str
    attempts: int
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    payload: JSON


@strawberry.type
class AuditEntry:
    id: int
    actor: str
    role: str
    action: str
    target: str
    detail: JSON
    source: str | None
    created_at: datetime


@strawberry.type
class UsageDay:
    project_id: int
    day: date
    accepted: int
    bytes: int
    rejected: JSON
    rejected_total: int
    deleted: int
    deleted_bytes: int


def _project(row: im.Project, plan: m.Plan | None) -> Project:
    return Project(
        id=row.id or 0,
        name=row.name,
        workspace_id=row.workspace_id,
        created_at=row.created_at,
        plan=Plan.of(plan) if plan else None,
    )


def _token(row: im.ProjectToken) -> Token:
    return Token(prefix=row.prefix, project_id=row.project_id, created_at=row.created_at, revoked_at=row.revoked_at)


def _key(row: im.SigningKey) -> SigningKey:
    return SigningKey(
        key_id=row.key_id,
        project_id=row.project_id,
        public_key=row.public_key,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def _api_key(row: im.ApiKey, member: str | None = None) -> ApiKey:
    return ApiKey(
        prefix=row.prefix,
        name=row.name,
        role=row.role,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        member=member,
    )


def _api_keys(session: Session, actor: ops.Actor) -> list[ApiKey]:
    rows = ops.list_api_keys(session, actor)
    members = ops.key_members(session, rows)
    return [_api_key(k, members.get(k.id or 0)) for k in rows]


def _member(row: m.Member) -> Member:
    return Member(email=row.email, role=row.role, created_at=row.created_at)


def _rule(row: m.AlertRule, actor: ops.Actor) -> AlertRule:
    return AlertRule(
        id=row.id or 0,
        project_id=row.project_id,
        kind=row.kind,
        channel=row.channel,
        target=row.target,
        threshold=row.threshold,
        enabled=row.enabled,
        created_at=row.created_at,
        secret=row.secret if ops.rank(actor.role) >= ops.rank("admin") else None,
    )


def _delivery(row: m.AlertDelivery) -> Delivery:
    return Delivery(
        id=row.id or 0,
        rule_id=row.rule_id,
        project_id=row.project_id,
        event_key=row.event_key,
        status=row.status,
        attempts=row.attempts,
        last_error=row.last_error,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
        payload=cast(JSON, row.payload),
    )


def _audit(row: m.AuditEntry) -> AuditEntry:
    return AuditEntry(
        id=row.id or 0,
        actor=row.actor,
        role=row.role,
        action=row.action,
        target=row.target,
        detail=cast(JSON, row.detail),
        source=row.source,
        created_at=row.created_at,
    )


def _usage(row: ops.UsageDay) -> UsageDay:
    return UsageDay(
        project_id=row.project_id,
        day=row.day,
        accepted=row.accepted,
        bytes=row.bytes,
        rejected=cast(JSON, row.rejected),
        rejected_total=sum(row.rejected.values()),
        deleted=row.deleted,
        deleted_bytes=row.deleted_bytes,
    )


def _projects_with_plans(session: Session, actor: ops.Actor) -> list[Project]:
    return [_project(p, ops.project_plan(session, p.id or 0)) for p in ops.list_projects(session, actor)]


def _one_project(session: Session, actor: ops.Actor, project_id: int) -> Project:
    return _project(ops.project(session, actor, project_id), ops.project_plan(session, project_id))


@strawberry.type
class Me:
    workspace: Workspace
    role: str
    key_prefix: str


# -- queries ----------------------------------------------------------------------------------------------


@strawberry.type
class Query:
    @strawberry.field(description="The API key's workspace and role")
    async def me(self, info: Info) -> Me:
        ws = await info.context.run(ops.get_workspace)
        actor = info.context.actor
        return Me(
            workspace=Workspace(id=ws.id or 0, name=ws.name, created_at=ws.created_at),
            role=actor.role,
            key_prefix=actor.who.removeprefix("apikey:"),
        )

    @strawberry.field
    async def projects(self, info: Info) -> list[Project]:
        return await info.context.run(_projects_with_plans)

    @strawberry.field
    async def project(self, info: Info, id: int) -> Project:
        return await info.context.run(_one_project, id)

    @strawberry.field(description="Ingest tokens (never their secrets), by project and/or prefix")
    async def tokens(self, info: Info, project_id: int | None = None, prefix: str | None = None) -> list[Token]:
        return [_token(t) for t in await info.context.run(ops.list_tokens, project_id, prefix)]

    @strawberry.field
    async def signing_keys(self, info: Info, project_id: int) -> list[SigningKey]:
        return [_key(k) for k in await info.context.run(ops.list_keys, project_id)]

    @strawberry.field
    async def api_keys(self, info: Info) -> list[ApiKey]:
        return await info.context.run(_api_keys)

    @strawberry.field
    async def members(self, info: Info) -> list[Member]:
        return [_member(x) for x in await info.context.run(ops.list_members)]

    @strawberry.field
    async def plans(self, info: Info) -> list[Plan]:
        return [Plan.of(p) for p in await info.context.run(lambda session, _actor: ops.list_plans(session))]

    @strawberry.field
    async def alert_rules(self, info: Info, project_id: int) -> list[AlertRule]:
        rows = await info.context.run(ops.list_alert_rules, project_id)
        return [_rule(r, info.context.actor) for r in rows]

    @strawberry.field(description="Alert deliveries by status (dead = the dead-letter list); admins and owners")
    async def deliveries(
        self, info: Info, status: str = "dead", project_id: int | None = None, limit: int = 100
    ) -> list[Delivery]:
        return [_delivery(d) for d in await info.context.run(ops.deliveries, status, project_id, limit)]

    @strawberry.field(description="Management changes, newest first; admins and owners")
    async def audit_log(self, info: Info, limit: int = 100, before_id: int | None = None) -> list[AuditEntry]:
        return [_audit(a) for a in await info.context.run(ops.audit_log, limit, before_id)]

    @strawberry.field(description="Usage counters per UTC day (default: the last 30 days)")
    async def usage(
        self, info: Info, project_id: int, since: date | None = None, until: date | None = None
    ) -> list[UsageDay]:
        return [_usage(u) for u in await info.context.run(ops.usage, project_id, since, until)]


# -- mutations ----------------------------------------------------------------------------------------------


@strawberry.type
class Mutation:
    @strawberry.mutation
    async def create_project(self, info: Info, name: str) -> Project:
        row = await info.context.run(ops.create_project, name)
        return _project(row, None)

    @strawberry.mutation(description="Mint an ingest token; the secret is shown only in this answer")
    async def create_token(self, info: Info, project_id: int, kind: str = "ingest") -> Issued:
        """`ingest` (frt_, for the app) or `ci` (frc_, for CI's replay reports); admins only."""
        issued = await info.context.run(ops.issue_token, project_id, kind)
        return Issued(secret=issued.secret, prefix=issued.prefix)

    @strawberry.mutation
    async def revoke_token(self, info: Info, prefix: str) -> Token:
        return _token(await info.context.run(ops.revoke_token, prefix))

    @strawberry.mutation(description="Register a public key printed by `fluxrun keys public capture.key`")
    async def register_signing_key(self, info: Info, project_id: int, public_key: str) -> SigningKey:
        return _key(await info.context.run(ops.register_key, project_id, public_key))

    @strawberry.mutation(description="Register a new key and revoke the old one at once")
    async def rotate_signing_key(self, info: Info, project_id: int, public_key: str, old_key_id: str) -> SigningKey:
        return _key(await info.context.run(ops.rotate_key, project_id, public_key, old_key_id))

    @strawberry.mutation
    async def revoke_signing_key(self, info: Info, project_id: int, key_id: str) -> SigningKey:
        return _key(await info.context.run(ops.revoke_key, project_id, key_id))

    @strawberry.mutation(
        description="Create an API key (role at most the caller's; a member's key at most the member's role, "
        "revoked when they are removed); shown only in this answer"
    )
    async def create_api_key(self, info: Info, name: str, role: str | None = None, member: str | None = None) -> Issued:
        issued = await info.context.run(ops.create_api_key, name, role, None, member)
        return Issued(secret=issued.secret, prefix=issued.prefix)

    @strawberry.mutation
    async def revoke_api_key(self, info: Info, prefix: str) -> ApiKey:
        return _api_key(await info.context.run(ops.revoke_api_key, prefix))

    @strawberry.mutation
    async def add_member(self, info: Info, email: str, role: str) -> Member:
        return _member(await info.context.run(ops.add_member, email, role))

    @strawberry.mutation
    async def change_member_role(self, info: Info, email: str, role: str) -> Member:
        return _member(await info.context.run(ops.change_member_role, email, role))

    @strawberry.mutation
    async def remove_member(self, info: Info, email: str) -> Member:
        return _member(await info.context.run(ops.remove_member, email))

    @strawberry.mutation(description="Choose a project's plan (owners only); plans are defined by the operator")
    async def set_project_plan(self, info: Info, project_id: int, plan: str) -> Plan:
        return Plan.of(await info.context.run(ops.set_project_plan, project_id, plan))

    @strawberry.mutation(description="kind: new_issue, regression or spike (threshold: per hour); webhook or email")
    async def create_alert_rule(
        self,
        info: Info,
        project_id: int,
        kind: str,
        channel: str,
        target: str,
        threshold: int | None = None,
    ) -> AlertRule:
        row = await info.context.run(ops.create_alert_rule, project_id, kind, channel, target, threshold)
        return _rule(row, info.context.actor)

    @strawberry.mutation
    async def set_alert_rule_enabled(self, info: Info, id: int, enabled: bool) -> AlertRule:
        return _rule(await info.context.run(ops.set_alert_rule_enabled, id, enabled), info.context.actor)

    @strawberry.mutation
    async def delete_alert_rule(self, info: Info, id: int) -> bool:
        await info.context.run(ops.delete_alert_rule, id)
        return True

    @strawberry.mutation(description="Send a dead letter again from the first attempt")
    async def retry_delivery(self, info: Info, id: int) -> Delivery:
        return _delivery(await info.context.run(ops.retry_delivery, id))


# What one request may ask, checked on the document before anything runs (a viewer's query with 10,000 aliases
# of one field ran 17 s). The deepest query the schema allows is 3 levels (projects { plan { id } }); the CLI and
# tests use a few aliases and a few hundred tokens. Strawberry's depth limit skips introspection fields, and
# nested introspection (`__schema { types { fields { type { fields ...`) grows exponentially with depth, so
# introspection is off: the API serves no IDE, and the schema is in the code and the docs.
MAX_DEPTH = 8
MAX_ALIASES = 30
MAX_TOKENS = 2000

schema = strawberry.Schema(
    query=Query,
    mutation=Mutation,
    extensions=[  # factories: a fresh extension for each request (an instance is shared by concurrent ones)
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),  # counted while parsing: never parsed whole
        lambda: MaxAliasesLimiter(max_alias_count=MAX_ALIASES),
        lambda: QueryDepthLimiter(max_depth=MAX_DEPTH),
        lambda: AddValidationRules([NoSchemaIntrospectionCustomRule]),
    ],
)
router: GraphQLRouter[Context, None] = GraphQLRouter(
    schema, path="/v1/graphql", context_getter=context_getter, graphql_ide=None, allow_queries_via_get=False
)
