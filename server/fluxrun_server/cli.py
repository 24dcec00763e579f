"""`fluxrun server` and `fluxrun server admin ...`: run the server, and manage its control plane."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from sqlmodel import Session

from fluxrun_server import admin
from fluxrun_server.index.database import make_engine, migrate
from fluxrun_server.settings import ServerSettings

__all__ = ["server_app"]

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
server_app = typer.Typer(help="Run the FluxRun ingest and query server.", invoke_without_command=True)
admin_app = typer.Typer(help="Workspaces, projects, ingest tokens, signing keys and API keys.", no_args_is_help=True)
server_app.add_typer(admin_app, name="admin")

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

    from fluxrun_server.main import create_app

    settings = _settings(settings_file)
    address = f"http://{host or settings.host}:{port or settings.port}"
    index = settings.resolved_database_url.split("@")[-1]  # never print a database password
    out.print(f"FluxRun server on {address}  data {settings.data_dir.resolve()}  index {index}")
    uvicorn.run(create_app(settings), host=host or settings.host, port=port or settings.port, log_level="warning")


def _session(ctx: typer.Context) -> Session:
    settings = _settings(ctx.obj)
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    return Session(engine)


T = TypeVar("T")


def _run(action: Callable[[], T]) -> T:
    try:
        return action()
    except admin.AdminError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None


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
def create_token(ctx: typer.Context, project: Annotated[str, typer.Argument(help="WORKSPACE/PROJECT or id")]) -> None:
    """Issue an ingest token for a project. It is shown once; only its hash is stored."""
    with _session(ctx) as session:
        issued = _run(lambda: admin.issue_token(session, project))
        out.print(issued.secret)
        err.print(f"ingest token for {project} (prefix {issued.prefix}); it is shown only this once")


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
    role: Annotated[str, typer.Option(help="owner, admin, member or viewer")] = "member",
) -> None:
    """Create a query API key for dashboard and CLI users of a workspace. Shown once."""
    with _session(ctx) as session:
        issued = _run(lambda: admin.create_api_key(session, workspace, name, role))
        out.print(issued.secret)
        err.print(f"API key {name} ({role}) for {workspace} (prefix {issued.prefix}); it is shown only this once")


@admin_app.command("revoke-api-key")
def revoke_api_key(ctx: typer.Context, prefix: str) -> None:
    with _session(ctx) as session:
        _run(lambda: admin.revoke_api_key(session, prefix))
        out.print(f"revoked API key {prefix[:12]}")
