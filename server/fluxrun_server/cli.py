"""`fluxrun server` and `fluxrun server admin ...`: run the server, and manage its control plane."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from sqlmodel import Session

from fluxrun_server import admin
from fluxrun_server.control import ops
from fluxrun_server.index.database import make_engine, migrate
from fluxrun_server.settings import ServerSettings

__all__ = ["server_app"]

out = Console(highlight=False, emoji=False)  # printed data must not turn into emoji (`app:Boom:`)
err = Console(stderr=True, highlight=False, emoji=False)
server_app = typer.Typer(help="Run the FluxRun ingest and query server.", invoke_without_command=True)
admin_app = typer.Typer(
    help="Workspaces, projects, ingest tokens, signing keys, API keys, members, plans, alert rules, audit, usage.",
    no_args_is_help=True,
)
server_app.add_typer(admin_app, name="admin")
quarantine_app = typer.Typer(
    help="Records the aggregator could not store (poison records), kept aside so indexing goes on.",
    no_args_is_help=True,
)
server_app.add_typer(quarantine_app, name="quarantine")

SettingsFile = Annotated[
    Path | None, typer.Option("--settings", help="A settings file (KEY=VALUE lines, FLUXRUN_SERVER_*).")
]


def _settings(settings_file: Path | None) -> ServerSettings:
    try:
        return ServerSettings(_env_file=settings_file) if settings_file else ServerSettings()
    except Exception as exc:
        err.print(f"[bold red]error:[/] invalid server settings: {exc}")
        raise typer.Exit(1) from None


@server_app.callback()
def serve(
    ctx: typer.Context,
    settings_file: SettingsFile = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (FLUXRUN_SERVER_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (FLUXRUN_SERVER_PORT).")] = None,
) -> None:
    """Run the server with uvicorn (no subcommand), on the embedded default unless configured."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = settings_file
        return
    import uvicorn

    from fluxrun_server.main import create_app, uvicorn_options

    settings = _settings(settings_file)
    address = f"http://{host or settings.host}:{port or settings.port}"
    index = settings.resolved_database_url.split("@")[-1]  # never print a database password
    out.print(f"FluxRun server on {address}  data {settings.data_dir.resolve()}  index {index}")
    uvicorn.run(
        create_app(settings),
        host=host or settings.host,
        port=port or settings.port,
        log_level="warning",
        **uvicorn_options(settings),
    )


@server_app.command("aggregate")
def aggregate(
    ctx: typer.Context,
    ack_wait: Annotated[
        float, typer.Option(min=1.0, max=3600.0, help="seconds before a dead aggregator's messages go to another")
    ] = 30.0,
) -> None:
    """Run one aggregator alone against the distributed log (FLUXRUN_SERVER_LOG_URL): log -> object store + index."""
    from fluxrun_server.ingest.aggregate_node import run_aggregator_node
    from fluxrun_server.ingest.log_nats import LogSetupError

    settings = _settings(ctx.obj)
    try:
        code = run_aggregator_node(
            settings, ack_wait_s=ack_wait, on_ready=lambda: out.print("FluxRun aggregator: pulling from the log")
        )
    except (ValueError, LogSetupError) as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@contextmanager
def _session(ctx: typer.Context) -> Iterator[Session]:
    settings = _settings(ctx.obj)
    engine = make_engine(settings.resolved_database_url)
    try:
        migrate(engine)
        with Session(engine) as session:
            yield session
    finally:
        engine.dispose()  # no pooled connections left behind (the CLI may run inside a test process)


T = TypeVar("T")


def _run(action: Callable[[], T]) -> T:
    try:
        return action()
    except admin.AdminError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None


def _json(value: object) -> None:
    out.print_json(json.dumps(value, default=str))


@admin_app.command("create-workspace")
def create_workspace(ctx: typer.Context, name: str) -> None:
    with _session(ctx) as session:
        workspace = _run(lambda: admin.create_workspace(session, name))
        out.print(f"created workspace {workspace.name} (id {workspace.id})")


@admin_app.command("create-project")
def create_project(ctx: typer.Context, workspace: str, name: str) -> None:
    with _session(ctx) as session:
        project = _run(lambda: admin.create_project(session, workspace, name))
        out.print(f"created project {workspace}/{project.name} (id {project.id})")


@admin_app.command("create-token")
def create_token(
    ctx: typer.Context,
    project: Annotated[str, typer.Argument(help="WORKSPACE/PROJECT or id")],
    ci: Annotated[bool, typer.Option("--ci", help="a CI token (frc_): reports replay outcomes, cannot ingest")] = False,
) -> None:
    """Issue an ingest token (or, with --ci, a CI token) for a project. It is shown once; only its hash is stored."""
    kind = "ci" if ci else "ingest"
    with _session(ctx) as session:
        issued = _run(lambda: admin.issue_token(session, project, kind=kind))
        out.print(issued.secret)
        err.print(f"{kind} token for {project} (prefix {issued.prefix}); it is shown only this once")


@admin_app.command("revoke-token")
def revoke_token(ctx: typer.Context, prefix: str) -> None:
    with _session(ctx) as session:
        _run(lambda: admin.revoke_token(session, prefix))
        out.print(f"revoked ingest token {prefix[:12]}")


@admin_app.command("add-key")
def add_key(
    ctx: typer.Context,
    project: Annotated[str, typer.Argument(help="WORKSPACE/PROJECT or id")],
    public_key: Annotated[str, typer.Argument(help="KEY_ID:BASE64 from `fluxrun keys public capture.key`")],
) -> None:
    """Register a signing public key: bundles signed with it are accepted for the project."""
    with _session(ctx) as session:
        row = _run(lambda: admin.register_key(session, project, public_key))
        out.print(f"registered signing key {row.key_id} for {project}")


@admin_app.command("revoke-key")
def revoke_key(ctx: typer.Context, project: str, key_id: str) -> None:
    with _session(ctx) as session:
        _run(lambda: admin.revoke_key(session, project, key_id))
        out.print(f"revoked signing key {key_id} for {project}")


@admin_app.command("create-api-key")
def create_api_key(
    ctx: typer.Context,
    workspace: str,
    name: str,
    role: Annotated[str | None, typer.Option(help="owner, admin, member or viewer (default: member)")] = None,
    member: Annotated[str | None, typer.Option(help="a member's key: at most their role, revoked with them")] = None,
) -> None:
    """Create a query API key for dashboard and CLI users of a workspace. Shown once."""
    with _session(ctx) as session:
        role = role or (None if member else "member")  # a member's key takes the member's role by default
        issued = _run(lambda: admin.create_api_key(session, workspace, name, role, member=member))
        out.print(issued.secret)
        err.print(f"API key {name} for {workspace} (prefix {issued.prefix}); it is shown only this once")


@admin_app.command("revoke-api-key")
def revoke_api_key(ctx: typer.Context, prefix: str) -> None:
    with _session(ctx) as session:
        _run(lambda: admin.revoke_api_key(session, prefix))
        out.print(f"revoked API key {prefix[:12]}")


# -- the rest of the management operations (the same ones GraphQL calls), as the operator -------------------

OPERATOR = ops.Actor.operator()


@admin_app.command("rotate-key")
def rotate_key(
    ctx: typer.Context,
    project: Annotated[str, typer.Argument(help="WORKSPACE/PROJECT or id")],
    old_key_id: str,
    public_key: Annotated[str, typer.Argument(help="the new KEY_ID:BASE64")],
) -> None:
    """Register a new signing key and revoke the old one at once."""
    with _session(ctx) as session:
        row = _run(
            lambda: ops.rotate_key(session, OPERATOR, admin.project_id(session, project), public_key, old_key_id)
        )
        out.print(f"rotated signing key {old_key_id} -> {row.key_id} for {project}")


@admin_app.command("list-tokens")
def list_tokens(
    ctx: typer.Context,
    project: Annotated[str | None, typer.Argument(help="WORKSPACE/PROJECT or id")] = None,
    prefix: Annotated[str | None, typer.Option(help="only tokens starting with this")] = None,
) -> None:
    """Ingest tokens (prefixes, never secrets)."""
    with _session(ctx) as session:
        rows = _run(
            lambda: ops.list_tokens(session, OPERATOR, admin.project_id(session, project) if project else None, prefix)
        )
        for t in rows:
            out.print(f"{t.prefix}  project {t.project_id}  {'revoked' if t.revoked_at else 'active'}")


@admin_app.command("add-member")
def add_member(
    ctx: typer.Context,
    workspace: str,
    email: str,
    role: Annotated[str, typer.Option(help="owner, admin, member, viewer")],
) -> None:
    with _session(ctx) as session:
        row = _run(lambda: ops.add_member(session, OPERATOR, email, role, admin.find_workspace(session, workspace).id))
        out.print(f"added {row.email} to {workspace} as {row.role}")


@admin_app.command("set-role")
def set_role(ctx: typer.Context, workspace: str, email: str, role: str) -> None:
    with _session(ctx) as session:
        ws = _run(lambda: admin.find_workspace(session, workspace))
        row = _run(lambda: ops.change_member_role(session, OPERATOR, email, role, ws.id))
        out.print(f"{row.email} is now {row.role} in {workspace}")


@admin_app.command("remove-member")
def remove_member(ctx: typer.Context, workspace: str, email: str) -> None:
    with _session(ctx) as session:
        ws = _run(lambda: admin.find_workspace(session, workspace))
        row = _run(lambda: ops.remove_member(session, OPERATOR, email, ws.id))
        out.print(f"removed {row.email} from {workspace}")


@admin_app.command("members")
def members(ctx: typer.Context, workspace: str) -> None:
    with _session(ctx) as session:
        ws = _run(lambda: admin.find_workspace(session, workspace))
        for row in _run(lambda: ops.list_members(session, OPERATOR, ws.id)):
            out.print(f"{row.email}  {row.role}")


@admin_app.command("create-plan")
def create_plan(
    ctx: typer.Context,
    name: str,
    bundles_per_day: Annotated[int | None, typer.Option(help="daily quota (429 once spent)")] = None,
    retention_days: Annotated[int | None, typer.Option(help="the retention job deletes older runs")] = None,
    max_payload_bytes: Annotated[int | None, typer.Option(help="largest sealed bundle accepted")] = None,
    rate: Annotated[float | None, typer.Option(help="bundles per second per project")] = None,
    burst: Annotated[int | None, typer.Option(help="token-bucket size (default twice the rate)")] = None,
) -> None:
    """Define (or change) a plan's limits; leave a limit out for none."""
    limits = {
        "bundles_per_day": bundles_per_day,
        "retention_days": retention_days,
        "max_payload_bytes": max_payload_bytes,
        "rate_per_second": rate,
        "burst": burst,
    }
    with _session(ctx) as session:
        plan = _run(lambda: ops.create_plan(session, OPERATOR, name, **limits))
        out.print(f"plan {plan.name} (id {plan.id})")


@admin_app.command("plans")
def plans(ctx: typer.Context) -> None:
    with _session(ctx) as session:
        _json([p.model_dump(exclude={"created_at"}) for p in ops.list_plans(session)])


@admin_app.command("set-plan")
def set_plan(
    ctx: typer.Context, project: Annotated[str, typer.Argument(help="WORKSPACE/PROJECT or id")], plan: str
) -> None:
    with _session(ctx) as session:
        row = _run(lambda: ops.set_project_plan(session, OPERATOR, admin.project_id(session, project), plan))
        out.print(f"{project} is on plan {row.name}")


@admin_app.command("add-alert-rule")
def add_alert_rule(
    ctx: typer.Context,
    project: Annotated[str, typer.Argument(help="WORKSPACE/PROJECT or id")],
    kind: Annotated[str, typer.Argument(help="new_issue, regression or spike")],
    channel: Annotated[str, typer.Argument(help="webhook or email")],
    target: Annotated[str, typer.Argument(help="URL or e-mail address")],
    threshold: Annotated[int | None, typer.Option(help="spike: executions of one issue per hour")] = None,
) -> None:
    """Create an alert rule; a webhook rule prints its HMAC secret."""
    with _session(ctx) as session:
        rule = _run(
            lambda: ops.create_alert_rule(
                session, OPERATOR, admin.project_id(session, project), kind, channel, target, threshold
            )
        )
        out.print(f"alert rule {rule.id}: {rule.kind} -> {rule.channel} {rule.target}")
        if rule.secret:
            out.print(f"webhook secret {rule.secret}")


@admin_app.command("alert-rules")
def alert_rules(ctx: typer.Context, project: Annotated[str, typer.Argument(help="WORKSPACE/PROJECT or id")]) -> None:
    with _session(ctx) as session:
        rows = _run(lambda: ops.list_alert_rules(session, OPERATOR, admin.project_id(session, project)))
        _json([r.model_dump(exclude={"secret"}) for r in rows])


@admin_app.command("delete-alert-rule")
def delete_alert_rule(ctx: typer.Context, rule_id: int) -> None:
    with _session(ctx) as session:
        _run(lambda: ops.delete_alert_rule(session, OPERATOR, rule_id))
        out.print(f"deleted alert rule {rule_id}")


@admin_app.command("dead-letters")
def dead_letters(
    ctx: typer.Context,
    project: Annotated[str | None, typer.Argument(help="WORKSPACE/PROJECT or id")] = None,
    status: Annotated[str, typer.Option(help="dead, pending or delivered")] = "dead",
) -> None:
    """Alert deliveries that failed every attempt (or, with --status, pending or delivered ones)."""
    with _session(ctx) as session:
        rows = _run(
            lambda: ops.deliveries(session, OPERATOR, status, admin.project_id(session, project) if project else None)
        )
        _json([r.model_dump(include={"id", "rule_id", "event_key", "status", "attempts", "last_error"}) for r in rows])


@admin_app.command("retry-delivery")
def retry_delivery(ctx: typer.Context, delivery_id: int) -> None:
    with _session(ctx) as session:
        _run(lambda: ops.retry_delivery(session, OPERATOR, delivery_id))
        out.print(f"delivery {delivery_id} will be sent again")


@admin_app.command("audit")
def audit(
    ctx: typer.Context,
    workspace: Annotated[str | None, typer.Argument(help="only this workspace")] = None,
    limit: int = 50,
) -> None:
    """Management changes, newest first: who, what, when, from where."""
    with _session(ctx) as session:
        ws = _run(lambda: admin.find_workspace(session, workspace)).id if workspace else None
        rows = _run(lambda: ops.audit_log(session, OPERATOR, limit, None, ws))
        _json([r.model_dump() for r in rows])


@admin_app.command("usage")
def usage(
    ctx: typer.Context,
    project: Annotated[str, typer.Argument(help="WORKSPACE/PROJECT or id")],
    since: Annotated[str | None, typer.Option(help="YYYY-MM-DD (default 30 days ago)")] = None,
    until: Annotated[str | None, typer.Option(help="YYYY-MM-DD (default today)")] = None,
) -> None:
    """Bundles accepted, rejected by reason, bytes stored and deleted, per UTC day."""
    try:
        first = date.fromisoformat(since) if since else None
        last = date.fromisoformat(until) if until else None
    except ValueError as exc:
        err.print(f"[bold red]error:[/] {exc}: give dates as YYYY-MM-DD")
        raise typer.Exit(1) from None
    with _session(ctx) as session:
        rows = _run(lambda: ops.usage(session, OPERATOR, admin.project_id(session, project), first, last))
        _json([asdict(r) for r in rows])


@quarantine_app.command("list")
def quarantine_list(
    ctx: typer.Context,
    project: Annotated[str | None, typer.Option(help="only this WORKSPACE/PROJECT (or id)")] = None,
    limit: Annotated[int, typer.Option(help="at most this many, newest first")] = 100,
) -> None:
    """Quarantined records as JSON: project, bundle id (cut), WAL LSN, why, and the object-store key of the bytes."""
    with _session(ctx) as session:
        rows = _run(lambda: admin.list_quarantined(session, project, limit))
        _json([r.model_dump() for r in rows])
