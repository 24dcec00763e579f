"""Errors FluxRun raises to its users. Each one says what was wrong and what to do about it."""

from __future__ import annotations

from typing import Literal

__all__ = ["BundleError", "ConfigError", "FluxRunError", "KeyFileError", "LiveIOBlocked", "ReplayDivergence"]


class FluxRunError(Exception):
    """Base class of every error FluxRun raises on purpose."""


class ConfigError(FluxRunError):
    """A setting passed to `fluxrun.init` or read from `FLUXRUN_*` is invalid."""


class KeyFileError(FluxRunError):
    """A key file is missing, unreadable, of the wrong kind, or malformed."""


BundleErrorReason = Literal[
    "not_a_bundle",
    "truncated",
    "unsupported_version",
    "tampered",
    "wrong_key",
    "unknown_key_id",
    "too_large",
    "malformed",
    "wrong_project",  # server ingest: the bundle's signed project is not the ingest token's (format v2)
]


class BundleError(FluxRunError):
    """A bundle cannot be read or opened.

    `reason` is a stable machine-readable code (the server reports it per rejected bundle);
    the message says what was wrong in words.
    """

    def __init__(self, reason: BundleErrorReason, message: str) -> None:
        super().__init__(message)
        self.reason: BundleErrorReason = reason


class ReplayDivergence(FluxRunError):
    """The code under replay made a call the recording cannot answer.

    The message names the call, where the code made it, the next recorded call on that channel with a
    short diff, and how far through the recording replay got. Nothing falls through to the live world.
    """

    def __init__(self, message: str, *, call: str = "", site: str = "", kind: str = "") -> None:
        super().__init__(message)
        self.call = call
        self.site = site
        self.kind = kind
        # the calls replay made before it stopped, (kind, call, task, site): for recorded-vs-actual reports
        self.actual: list[tuple[str, str, str, str]] = []


class LiveIOBlocked(FluxRunError):
    """Replay tried to reach the live world (a socket connection or a DNS lookup) and was stopped."""

    def __init__(self, message: str, *, host: str = "", site: str = "") -> None:
        super().__init__(message)
        self.host = host
        self.site = site
