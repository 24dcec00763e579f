"""Configuration in one place: `fluxrun.init` keyword arguments, else `FLUXRUN_*` environment variables.

Explicit arguments win over the environment; the environment wins over defaults. Invalid values
raise `ConfigError` at `init`, naming the setting, the value, and what is accepted, so a typo is
found at start-up rather than as a missing bundle after an incident.

Each setting is defined once, as a field of `Options` whose metadata names its `init` argument, its
environment variable and how a given value is read; `resolve_options` walks those fields.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fluxrun.errors import ConfigError
from fluxrun.scrub import Scrubber

__all__ = ["DEFAULT_DIRECTORY", "Options", "resolve_options"]

DEFAULT_DIRECTORY = Path(".fluxrun") / "bundles"
DEFAULT_MAX_BODY_SIZE = 1 << 20
DEFAULT_MAX_QUEUE = 1000
DEFAULT_MAX_DB_ROWS = 10_000


def _number(kind: type, low: float, high: float | None, default: float, hint: str) -> Callable[[str, Any], Any]:
    def read(name: str, raw: Any) -> Any:
        if raw is None:
            return default
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            noun = "whole number" if kind is int else "number"
            raise ConfigError(f"{name}={raw!r} is not a {noun}; {hint}") from None
        if value < low or (high is not None and value > high):
            raise ConfigError(f"{name}={raw!r} is out of range; {hint}")
        return value

    return read


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


def _text(name: str, raw: Any) -> str | None:
    return None if raw is None else str(raw)


def _dsn(name: str, raw: Any) -> str | None:
    return None if raw is None else check_dsn(str(raw))


def _directory(name: str, raw: Any) -> Path:
    return Path(raw if raw is not None else DEFAULT_DIRECTORY).expanduser()


def _key_path(name: str, raw: Any) -> Path | None:
    return Path(raw).expanduser() if raw is not None else None


def _scrubber(name: str, raw: Any) -> Scrubber:
    if isinstance(raw, str):  # from the environment: comma-separated key names
        raw = [k.strip() for k in raw.split(",") if k.strip()]
    return Scrubber.from_config(raw)


def _module_list(name: str, raw: Any) -> tuple[str, ...]:
    return _modules(raw)


def _flag(name: str, raw: Any) -> bool:
    if raw is None:
        return True
    if isinstance(raw, bool):
        return raw
    flag = str(raw).lower()
    if flag not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ConfigError(f"{name}={raw!r}: use true or false")
    return flag in ("1", "true", "yes", "on")


def _setting(env: str | None, read: Callable[[str, Any], Any], *, arg: str | None = None) -> dict[str, Any]:
    """A field's metadata: `init`'s argument `arg` (the field's own name unless given), else `env`, read by `read`."""
    return {"env": env, "read": read, "arg": arg}


@dataclass(frozen=True)
class Options:
    dsn: str | None = field(metadata=_setting("FLUXRUN_DSN", _dsn))
    directory: Path = field(metadata=_setting("FLUXRUN_DIR", _directory))
    capture_key: Path | None = field(metadata=_setting("FLUXRUN_CAPTURE_KEY", _key_path))
    sample_rate: float = field(
        metadata=_setting(
            "FLUXRUN_SAMPLE_RATE",
            _number(
                float,
                0.0,
                1.0,
                0.0,
                "use a fraction from 0 (keep failures only, the default) to 1 (keep every execution)",
            ),
        )
    )
    scrubber: Scrubber = field(metadata=_setting("FLUXRUN_SCRUB_KEYS", _scrubber, arg="scrub"))
    max_body_size: int = field(
        metadata=_setting(
            "FLUXRUN_MAX_BODY_SIZE",
            _number(int, 0, None, DEFAULT_MAX_BODY_SIZE, "use a number of bytes, e.g. 1048576 for 1 MiB"),
        )
    )
    release: str | None = field(metadata=_setting("FLUXRUN_RELEASE", _text))
    environment: str | None = field(metadata=_setting("FLUXRUN_ENVIRONMENT", _text))
    in_app_include: tuple[str, ...] = field(metadata=_setting("FLUXRUN_IN_APP_INCLUDE", _module_list))
    in_app_exclude: tuple[str, ...] = field(metadata=_setting("FLUXRUN_IN_APP_EXCLUDE", _module_list))
    max_queue: int = field(
        metadata=_setting(
            "FLUXRUN_MAX_QUEUE",
            _number(int, 1, None, DEFAULT_MAX_QUEUE, "use how many sealed bundles may wait to be written, e.g. 1000"),
        )
    )
    enabled: bool = field(metadata=_setting("FLUXRUN_ENABLED", _flag))
    max_db_rows: int = field(
        metadata=_setting(
            "FLUXRUN_MAX_DB_ROWS",
            _number(
                int, 0, None, DEFAULT_MAX_DB_ROWS, "use how many rows of one database result to record, e.g. 10000"
            ),
        )
    )


def argument_names() -> list[str]:
    """`fluxrun.init`'s keyword arguments, in order (a test holds `init`'s signature to this list)."""
    return [f.metadata["arg"] or f.name for f in fields(Options)]


def resolve_options(*, env: Mapping[str, str] | None = None, **given: Any) -> Options:
    """`Options` from `init`'s arguments (None: not given), else the environment, else the defaults."""
    env = os.environ if env is None else env
    unknown = set(given) - set(argument_names())
    if unknown:
        raise ConfigError(f"unknown setting {sorted(unknown)[0]!r}; the settings are: {', '.join(argument_names())}")
    values: dict[str, Any] = {}
    for spec in fields(Options):
        arg = spec.metadata["arg"] or spec.name
        env_name = spec.metadata["env"]
        raw, label = given.get(arg), arg  # a bad value is named as the user gave it: argument or variable
        if (raw is None or raw == "") and env_name:
            raw, label = env.get(env_name) or None, env_name
        values[spec.name] = spec.metadata["read"](label, raw)
    return Options(**values)
