"""Configuration in one place: `fluxrun.init` keyword arguments, else `FLUXRUN_*` environment variables.

Explicit arguments win over the environment; the environment wins over defaults. Invalid values
raise `ConfigError` at `init`, naming the setting, the value, and what is accepted, so a typo is
found at start-up rather than as a missing bundle after an incident.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fluxrun.errors import ConfigError
from fluxrun.scrub import Scrubber

__all__ = ["DEFAULT_DIRECTORY", "Options", "resolve_options"]

DEFAULT_DIRECTORY = Path(".fluxrun") / "bundles"
DEFAULT_MAX_BODY_SIZE = 1 << 20
DEFAULT_MAX_QUEUE = 1000


@dataclass(frozen=True)
class Options:
    dsn: str | None
    directory: Path
    capture_key: Path | None
    sample_rate: float
    scrubber: Scrubber
    max_body_size: int
    release: str | None
    environment: str | None
    in_app_include: tuple[str, ...] = ()
    in_app_exclude: tuple[str, ...] = ()
    max_queue: int = DEFAULT_MAX_QUEUE
    enabled: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)


def _env(name: str, env: Mapping[str, str]) -> str | None:
    value = env.get(name)
    return value if value not in (None, "") else None


def _number(name: str, raw: object, kind: type, low: float, high: float | None, hint: str) -> Any:
    try:
        value = kind(raw)
    except (TypeError, ValueError):
        noun = "whole number" if kind is int else "number"
        raise ConfigError(f"{name}={raw!r} is not a {noun}; {hint}") from None
    if value < low or (high is not None and value > high):
        raise ConfigError(f"{name}={raw!r} is out of range; {hint}")
    return value


def _modules(raw: str | Iterable[str] | None) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    return tuple(raw)


def check_dsn(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.scheme not in ("http", "https") or not parts.hostname or not parts.username:
        raise ConfigError(
            f"FLUXRUN_DSN {dsn.split('@')[-1]!r} is not a FluxRun DSN; expected https://TOKEN@host/PROJECT "
            "(the server prints it when you create a project)"
        )
    return dsn


def resolve_options(
    *,
    dsn: str | None,
    directory: str | os.PathLike[str] | None,
    capture_key: str | os.PathLike[str] | None,
    sample_rate: float | None,
    scrub: Scrubber | Iterable[str] | None,
    max_body_size: int | None,
    release: str | None,
    environment: str | None,
    in_app_include: Iterable[str] | None,
    in_app_exclude: Iterable[str] | None,
    max_queue: int | None,
    enabled: bool | None,
    env: Mapping[str, str] | None = None,
) -> Options:
    env = os.environ if env is None else env
    dsn = dsn or _env("FLUXRUN_DSN", env)
    if dsn is not None:
        check_dsn(dsn)
    folder = Path(directory or _env("FLUXRUN_DIR", env) or DEFAULT_DIRECTORY).expanduser()
    key_path = capture_key or _env("FLUXRUN_CAPTURE_KEY", env)
    rate = _number(
        "sample_rate (FLUXRUN_SAMPLE_RATE)",
        sample_rate if sample_rate is not None else _env("FLUXRUN_SAMPLE_RATE", env) or 0.0,
        float,
        0.0,
        1.0,
        "use a fraction from 0 (keep failures only, the default) to 1 (keep every execution)",
    )
    body = _number(
        "max_body_size (FLUXRUN_MAX_BODY_SIZE)",
        max_body_size if max_body_size is not None else _env("FLUXRUN_MAX_BODY_SIZE", env) or DEFAULT_MAX_BODY_SIZE,
        int,
        0,
        None,
        "use a number of bytes, e.g. 1048576 for 1 MiB",
    )
    queue = _number(
        "max_queue (FLUXRUN_MAX_QUEUE)",
        max_queue if max_queue is not None else _env("FLUXRUN_MAX_QUEUE", env) or DEFAULT_MAX_QUEUE,
        int,
        1,
        None,
        "use how many sealed bundles may wait to be written, e.g. 1000",
    )
    if scrub is None and _env("FLUXRUN_SCRUB_KEYS", env):
        scrub = [k.strip() for k in (_env("FLUXRUN_SCRUB_KEYS", env) or "").split(",") if k.strip()]
    if enabled is None:
        flag = (_env("FLUXRUN_ENABLED", env) or "true").lower()
        if flag not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ConfigError(f"FLUXRUN_ENABLED={flag!r}: use true or false")
        enabled = flag in ("1", "true", "yes", "on")
    return Options(
        dsn=dsn,
        directory=folder,
        capture_key=Path(key_path).expanduser() if key_path else None,
        sample_rate=rate,
        scrubber=Scrubber.from_config(scrub),
        max_body_size=body,
        release=release or _env("FLUXRUN_RELEASE", env),
        environment=environment or _env("FLUXRUN_ENVIRONMENT", env),
        in_app_include=_modules(in_app_include if in_app_include is not None else _env("FLUXRUN_IN_APP_INCLUDE", env)),
        in_app_exclude=_modules(in_app_exclude if in_app_exclude is not None else _env("FLUXRUN_IN_APP_EXCLUDE", env)),
        max_queue=queue,
        enabled=enabled,
    )
