"""`fluxrun` commands. Errors print one clear line (what was wrong, what to do) and exit 1, never a traceback."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup, TyperOption
from typer.models import DefaultPlaceholder

from fluxrun._version import __version__
from fluxrun.errors import FluxRunError


class _BareFlags:
    """`--help` without a type label on flags: typer labels every flag `<bool>`, as if it took a value."""

    def get_params(self, ctx: Any) -> list[Any]:  # typer's own (vendored) click Context and Parameter
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
                param.metavar = ""  # typer's help shows the metavar, when one is set, in the type column
        return params


class Command(_BareFlags, TyperCommand):
    """Every `fluxrun` command (see `bare_flags`)."""


class Group(_BareFlags, TyperGroup):
    """Every `fluxrun` command group (see `bare_flags`)."""


def bare_flags(typer_app: typer.Typer) -> None:
    """Build `typer_app`'s commands and groups, and those added to it (`server`, `demo`), with `Command` and
    `Group`, unless one chose a class of its own."""
    if _plain(typer_app.info.cls, TyperGroup):
        typer_app.info.cls = Group
    for command in typer_app.registered_commands:
        if _plain(command.cls, TyperCommand):
            command.cls = Command
    for group in typer_app.registered_groups:
        if _plain(group.cls, TyperGroup):
            group.cls = Group
        if group.typer_instance is not None:
            bare_flags(group.typer_instance)


def _plain(cls: object, default: type) -> bool:
    return cls is None or cls is default or isinstance(cls, DefaultPlaceholder)


app = typer.Typer(
    name="fluxrun",
    help="FluxRun: turn one production failure into a fix and a regression guard.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(help="Create and show the keys that seal and open bundles.", no_args_is_help=True)
bundle_app = typer.Typer(help="Look inside captured bundles.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(bundle_app, name="bundle")

# Tables need room: when the output is not a terminal (CI logs, files) assume a wide page, not 80 columns.
# no emoji codes: printed data (an exception type `app:Boom:`) must not turn into pictures
out = Console(highlight=False, emoji=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, emoji=False, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])


def friendly(func: F) -> F:
    """Turn FluxRun's own errors and missing files into one readable line and exit status 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except FluxRunError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True)  # it may quote data: a path, a name
            raise typer.Exit(1) from None
        except OSError as exc:
            where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
            problem = f"cannot read or write{where}: {exc.strerror or exc}"
            err.print(f"[bold red]error:[/] {escape(problem)}", markup=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


# What a replay may be asked to end as: the outcome words a replay prints, and the older verbs.
EXPECT_WORDS = {"fixed": "fixed", "reproduced": "reproduce", "reproduce": "reproduce"}


def expectation(word: str) -> str:
    """`--expect` as the replay engine names it ("fixed" or "reproduce")."""
    try:
        return EXPECT_WORDS[word]
    except KeyError:
        raise FluxRunError(f"--expect {word!r}: use fixed or reproduced") from None


def bundle_file(path: Path) -> Path:
    """The bundle a command was given, or one line saying why it is not there (the same for every command)."""
    if path.is_dir():
        raise FluxRunError(f"{path} is a folder, not a bundle file")
    if not path.exists():
        raise FluxRunError(f"no bundle at {path} (check the path, or fetch it with `fluxrun pull`)")
    return path


def _version(value: bool) -> None:
    if value:
        out.print(f"fluxrun {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """FluxRun: turn one production failure into a fix and a regression guard."""


@keys_app.command("generate")
@friendly
def keys_generate(
    directory: Annotated[Path, typer.Argument(help="Folder for capture.key and replay.key (created if missing).")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite key files that already exist.")] = False,
) -> None:
    """Write DIR/capture.key (for the app) and DIR/replay.key (for you, your tests and CI), mode 0600."""
    from fluxrun.bundle import generate_keys, load_capture_key, load_replay_key

    capture_path, replay_path = generate_keys(directory, force=force)
    capture = load_capture_key(capture_path)
    replay = load_replay_key(replay_path)
    out.print(f"wrote {capture_path}  signing key {capture.signing_key_id}, seals to {capture.recipient_key_id}")
    out.print(f"wrote {replay_path}  opens {', '.join(replay.recipients)}; keep it off the app's servers")
    out.print(f"next: set FLUXRUN_CAPTURE_KEY={capture_path} where the app runs")


@keys_app.command("public")
@friendly
def keys_public(
    capture_key: Annotated[Path, typer.Argument(help="The app's capture.key.")],
) -> None:
    """Print the signing public key to register with a FluxRun server (as KEY_ID:BASE64)."""
    from fluxrun.bundle import load_capture_key, signing_public_key

    key_id, public = signing_public_key(load_capture_key(capture_key))
    out.print(f"{key_id}:{public}")


@bundle_app.command("inspect")
@friendly
def bundle_inspect(
    file: Annotated[Path, typer.Argument(help="A .fluxrun bundle file.")],
    key: Annotated[
        Path | None,
        typer.Option("--key", help="replay.key: verify the signature and show the decrypted event timeline."),
    ] = None,
    show_secrets: Annotated[
        bool, typer.Option("--show-secrets", help="With --key: show values the scrub rules would mask.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary (and payload with --key) as JSON.")
    ] = False,
) -> None:
    """Print a bundle's summary and, with --key, its decrypted event timeline as a table."""
    from fluxrun.cli.inspect import inspect_bundle

    inspect_bundle(out, bundle_file(file), key, show_secrets=show_secrets, as_json=as_json)


@app.command("replay")
@friendly
def replay_command(
    file: Annotated[Path, typer.Argument(help="A .fluxrun bundle file.")],
    key: Annotated[Path | None, typer.Option("--key", help="replay.key (default: FLUXRUN_REPLAY_KEY).")] = None,
    app_entry: Annotated[
        str | None,
        typer.Option(
            "--app",
            help="Replay against this entry point (module:attr; default FLUXRUN_REPLAY_APP). Without it the "
            "bundle's recorded entry replays only if @fluxrun.capture or the FluxRun middleware marked it.",
        ),
    ] = None,
    expect: Annotated[
        str | None,
        typer.Option("--expect", help="fixed or reproduced: exit 1 unless the replay ends that way."),
    ] = None,
    lenient: Annotated[
        bool, typer.Option("--lenient", help="With --expect reproduced: recorded calls never made only warn.")
    ] = False,
) -> None:
    """Replay a captured failure against the code in this folder, with no network, and say how it ended."""
    from fluxrun._replay_mode import replaying
    from fluxrun.replay import ReplayExpectationError, check, run

    wanted = expectation(expect) if expect is not None else None
    bundle_file(file)
    if key is None and not os.environ.get("FLUXRUN_REPLAY_KEY"):
        raise FluxRunError(
            "replay opens the bundle with your replay key: pass --key path/to/replay.key or set "
            "FLUXRUN_REPLAY_KEY (the replay.key written by `fluxrun keys generate`)"
        )
    with replaying():  # the app's own fluxrun.init() runs when it is imported: no capture warnings
        result = run(file, key, app=app_entry)
    out.print(escape(result.summary()))
    if wanted is not None:
        try:
            check(result, wanted, strict=not lenient)  # type: ignore[arg-type]
        except ReplayExpectationError as exc:
            err.print(f"[bold red]error:[/] {escape(str(exc).splitlines()[0])}")
            raise typer.Exit(1) from None
        for warning in result.warnings:
            err.print(f"[yellow]warning:[/] {escape(warning)}")


@app.command("export-test")
@friendly
def export_test(
    file: Annotated[Path, typer.Argument(help="A .fluxrun bundle file.")],
    key: Annotated[
        Path | None,
        typer.Option("--key", help="replay.key (default: FLUXRUN_REPLAY_KEY): the signature is verified first."),
    ] = None,
    out_file: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Where to write the test (default: test_<route>_<fingerprint>.py beside the bundle)."
        ),
    ] = None,
    expect: Annotated[
        str, typer.Option("--expect", help="fixed (a regression guard) or reproduced (the bug, before its fix).")
    ] = "fixed",
) -> None:
    """Write a readable pytest file that replays the bundle, once its signature checks out."""
    from fluxrun.cli.export import write_test

    path = write_test(bundle_file(file), out_file, expect=expectation(expect), key=key)
    out.print(escape(f"wrote {path}; run it with FLUXRUN_REPLAY_KEY=path/to/replay.key pytest {path}"))


@app.command("pull")
@friendly
def pull_command(
    ref: Annotated[str, typer.Argument(help="A run (bundle) id, or an issue id as issue:42.")],
    to: Annotated[Path, typer.Option("--to", help="Folder for the bundles.")] = Path("tests/fluxrun"),
    server: Annotated[str | None, typer.Option("--server", help="Server URL (FLUXRUN_SERVER).")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help="A query API key (FLUXRUN_API_KEY).")] = None,
    limit: Annotated[int, typer.Option("--limit", help="For an issue: how many of its newest runs.")] = 20,
) -> None:
    """Download captured failures (still encrypted) into a folder of regression guards."""
    from fluxrun.cli.pull import pull

    written = pull(out, ref, to, server=server, api_key=api_key, limit=limit)
    for path in written:
        out.print(f"pulled {path}")
    out.print(f"next: FLUXRUN_REPLAY_KEY=path/to/replay.key pytest --fluxrun-bundles {to}")


@app.command("agent")
@friendly
def agent_command(
    host: Annotated[str | None, typer.Option("--host", help="Address (FLUXRUN_AGENT_HOST; 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (FLUXRUN_AGENT_PORT; 8401).")] = None,
    replay_key: Annotated[Path | None, typer.Option("--replay-key", help="replay.key (FLUXRUN_REPLAY_KEY).")] = None,
    grant_key: Annotated[
        str | None, typer.Option("--grant-key", help="The server's grant key KEY_ID:BASE64 (FLUXRUN_AGENT_GRANT_KEY).")
    ] = None,
    server: Annotated[
        str | None, typer.Option("--server", help="Fetch the grant key from this server (FLUXRUN_AGENT_SERVER).")
    ] = None,
    project: Annotated[str | None, typer.Option("--project", help="Project served (FLUXRUN_AGENT_PROJECT).")] = None,
    origin: Annotated[
        str | None, typer.Option("--origin", help="Dashboard origin allowed by CORS (FLUXRUN_AGENT_ORIGIN).")
    ] = None,
    audit_log: Annotated[
        Path | None, typer.Option("--audit-log", help="JSON lines audit log (FLUXRUN_AGENT_AUDIT_LOG).")
    ] = None,
) -> None:
    """Run the agent: it alone holds the replay key and unlocks or replays bundles for server grants."""
    from fluxrun.agent import serve

    serve(
        host,
        port,
        announce=lambda line: out.print(escape(line), soft_wrap=True),
        replay_key=replay_key,
        grant_key=grant_key,
        server=server,
        project=project,
        origin=origin,
        audit_log=audit_log,
    )


COMMANDS_GROUP = "fluxrun.commands"


def _add_plugged_commands(argv: list[str]) -> None:
    """Commands registered under the `fluxrun.commands` entry point group (`server` and `demo` are, in this
    distribution): each is loaded only when asked for (or for `--help`), so the client CLI never imports the
    server. An entry point is a Typer app (a command group) or a function (one command)."""
    from importlib.metadata import entry_points

    wanted = next((arg for arg in argv if not arg.startswith("-")), None)
    for point in entry_points(group=COMMANDS_GROUP):
        if wanted is not None and point.name != wanted:
            continue
        try:
            command = point.load()
        except ImportError as exc:
            _add_missing(point.name, exc.name or "a dependency")
            continue
        if isinstance(command, typer.Typer):
            app.add_typer(command, name=point.name)
        else:
            app.command(point.name)(command)


def _add_missing(name: str, missing: str) -> None:
    extra = "server" if name == "server" else "demo"

    @app.command(name, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def command_missing() -> None:
        """Needs an extra that is not installed."""
        err.print(f"[bold red]error:[/] fluxrun {name} needs {missing}: pip install 'fluxrun[{extra}]'")
        raise typer.Exit(1)


bare_flags(app)


def main() -> None:
    _add_plugged_commands(sys.argv[1:])
    bare_flags(app)
    app(prog_name="fluxrun")


if __name__ == "__main__":  # pragma: no cover
    main()
