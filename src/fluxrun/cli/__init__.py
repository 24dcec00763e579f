"""The `fluxrun` command line: keys, bundle inspection, and the demo."""

from fluxrun.cli.app import app, main

__all__ = ["app", "main"]
