"""`fluxrun demo`, registered with the client CLI through the `fluxrun.commands` entry point group."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fluxrun.cli.app import friendly, out


@friendly
def demo(
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Keep the demo's server data, keys, app and tests in this new folder.")
    ] = None,
    serve: Annotated[
        bool, typer.Option("--serve", help="Keep the server, agent and shop running afterwards (until Ctrl-C).")
    ] = False,
) -> None:
    """The whole loop on loopback: server, agent, a shop that fails, capture, ship, pull, replay, fix, guard."""
    from fluxrun_demo.run import run_demo

    run_demo(out, directory, serve=serve)
