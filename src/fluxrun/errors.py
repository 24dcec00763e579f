"""Errors FluxRun raises to its users. Each one says what was wrong and what to do about it."""

from __future__ import annotations

from typing import Literal

__all__ = ["BundleError", "ConfigError", "FluxRunError", "KeyFileError"]


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
]


class BundleError(FluxRunError):
    """A bundle cannot be read or opened.

    `reason` is a stable machine-readable code (the server reports it per rejected bundle);
    the message says what was wrong in words.
    """

    def __init__(self, reason: BundleErrorReason, message: str) -> None:
        super().__init__(message)
        self.reason: BundleErrorReason = reason
