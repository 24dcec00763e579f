"""Agent settings: keyword arguments, else `FLUXRUN_AGENT_*` environment variables, else safe defaults.

Everything the agent trusts is decided here, once, at start-up: which replay key it opens bundles with,
which grant key it believes (pinned, or fetched from the server on first use and logged as such), which
project it serves and which browser origin may call it. A missing or contradictory setting is a
`ConfigError` that names the variable, so a misconfigured agent never starts half-trusting.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fluxrun.agent.nonces import default_nonce_store
from fluxrun.bundle import ReplayKey, load_replay_keys
from fluxrun.errors import ConfigError
from fluxrun.grant import parse_grant_public_key
from fluxrun.scrub import Scrubber

__all__ = ["DEFAULT_AUDIT_LOG", "DEFAULT_HOST", "DEFAULT_PORT", "AgentConfig", "resolve_config"]

log = logging.getLogger("fluxrun.agent")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8401
DEFAULT_AUDIT_LOG = Path(".fluxrun") / "agent" / "audit.jsonl"
DEFAULT_MAX_BUNDLE_BYTES = 16 * 1024 * 1024
# Refusals (requests without a valid grant) per client address: a burst, then this many a second; all
# clients together get ten times both. A dashboard user makes a handful; a flood gets 429.
DEFAULT_REFUSAL_BURST = 30
DEFAULT_REFUSAL_RATE = 1.0
_FETCH_TIMEOUT = 10.0

ReplayKeyArg = str | os.PathLike[str] | ReplayKey | Sequence[str | os.PathLike[str]]


@dataclass(frozen=True)
class AgentConfig:
    """What a running agent holds. `replay_key` is the only secret; its repr shows key ids only."""

    replay_key: ReplayKey
    grant_key_id: str
    grant_public: Ed25519PublicKey
    grant_key_trust: str  # "pinned" or "trusted on first use"
    grant_key_server: str | None
    project: str
    origin: str | None
    audit_log: Path
    scrubber: Scrubber
    max_bundle_bytes: int = DEFAULT_MAX_BUNDLE_BYTES
    nonce_store: Path | None = None  # None: beside the audit log (`default_nonce_store`)
    refusal_burst: int = DEFAULT_REFUSAL_BURST
    refusal_rate: float = DEFAULT_REFUSAL_RATE

    def __repr__(self) -> str:
        return (
            f"AgentConfig(project={self.project!r}, grant_key_id={self.grant_key_id!r}, "
            f"replay_key={self.replay_key!r}, origin={self.origin!r}, audit_log={str(self.audit_log)!r}, "
            f"nonce_store={str(self.nonce_store)!r})"
        )


def _env(env: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = env.get(name)
        if value not in (None, ""):
            return value
    return None


def _replay_key(value: ReplayKeyArg | None, env: Mapping[str, str]) -> ReplayKey:
    if isinstance(value, ReplayKey):
        return value
    if value is None:
        raw = _env(env, "FLUXRUN_AGENT_REPLAY_KEY", "FLUXRUN_REPLAY_KEY")
        if raw is None:
            raise ConfigError(
                "no replay key: set FLUXRUN_REPLAY_KEY=path/to/replay.key (or pass replay_key=...); it is the "
                "replay.key from `fluxrun keys generate`, and the agent is the only place that should hold it"
            )
        paths = [Path(p) for p in raw.split(os.pathsep) if p]
    elif isinstance(value, str | os.PathLike):
        paths = [Path(value)]
    else:
        paths = [Path(p) for p in value]
    return load_replay_keys(paths)


def fetch_grant_key(server: str) -> str:
    """GET {server}/v1/grant-key and return it as KEY_ID:BASE64 (trust on first use)."""
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"FLUXRUN_AGENT_SERVER={server!r} is not an http(s) URL of a FluxRun server")
    url = server.rstrip("/") + "/v1/grant-key"
    try:
        with urllib.request.urlopen(url, timeout=_FETCH_TIMEOUT) as response:  # scheme checked above
            document = orjson.loads(response.read(64 * 1024))
    except (urllib.error.URLError, OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(
            f"cannot fetch the grant key from {url} ({exc}); check FLUXRUN_AGENT_SERVER, or pin the key with "
            "FLUXRUN_AGENT_GRANT_KEY=KEY_ID:BASE64"
        ) from None
    if not isinstance(document, dict) or not isinstance(document.get("key_id"), str):
        raise ConfigError(f"{url} did not answer with a grant key ({{key_id, public_key}}); is it a FluxRun server?")
    return f"{document['key_id']}:{document.get('public_key')}"


def _origin(value: str | None) -> str | None:
    if value is None:
        return None
    origin = value.strip().rstrip("/")
    parts = urlsplit(origin)
    if origin == "*" or parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
        raise ConfigError(
            f"FLUXRUN_AGENT_ORIGIN={value!r}: give the dashboard's origin exactly, as scheme://host[:port] "
            "(for example https://fluxrun.example.com); a wildcard would let any web page call the agent"
        )
    return origin


def _positive_int(name: str, value: Any, unit: str = "bytes") -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number <= 0:
        raise ConfigError(f"{name}={value!r} must be a positive whole number of {unit}")
    return number


def _positive_float(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = 0.0
    if not number > 0 or number == float("inf"):
        raise ConfigError(f"{name}={value!r} must be a positive number (refusals a second per client)")
    return number


def resolve_config(
    *,
    replay_key: ReplayKeyArg | None = None,
    grant_key: str | None = None,
    server: str | None = None,
    project: str | int | None = None,
    origin: str | None = None,
    audit_log: str | os.PathLike[str] | None = None,
    scrubber: Scrubber | None = None,
    max_bundle_bytes: int | None = None,
    nonce_store: str | os.PathLike[str] | None = None,
    refusal_burst: int | None = None,
    refusal_rate: float | None = None,
    env: Mapping[str, str] | None = None,
) -> AgentConfig:
    """Build the agent's settings; an argument beats its environment variable, which beats the default.

    - `replay_key` (`FLUXRUN_AGENT_REPLAY_KEY`, else `FLUXRUN_REPLAY_KEY`; several paths joined by os.pathsep)
    - `grant_key` (`FLUXRUN_AGENT_GRANT_KEY`): the server's grant public key as KEY_ID:BASE64, pinned
    - `server` (`FLUXRUN_AGENT_SERVER`): without a pinned key, fetch it from this server at start-up (logged)
    - `project` (`FLUXRUN_AGENT_PROJECT`): the project id (or workspace/project name) this agent serves
    - `origin` (`FLUXRUN_AGENT_ORIGIN`): the dashboard origin CORS allows; none means no browser access
    - `audit_log` (`FLUXRUN_AGENT_AUDIT_LOG`): JSON lines, default .fluxrun/agent/audit.jsonl
    - `max_bundle_bytes` (`FLUXRUN_AGENT_MAX_BUNDLE_BYTES`): largest bundle accepted, default 16 MiB
    - `nonce_store` (`FLUXRUN_AGENT_NONCE_STORE`): the used-grant SQLite file, default beside the audit log
    - `refusal_burst`, `refusal_rate` (`FLUXRUN_AGENT_REFUSAL_BURST`, `FLUXRUN_AGENT_REFUSAL_RATE`): refusals
      per client address before 429, and how many a second after that (default 30, then 1/s)
    - `scrubber` (`FLUXRUN_SCRUB_KEYS`, comma-separated extra key names): the masking rules
    """
    env = os.environ if env is None else env
    key = _replay_key(replay_key, env)

    project_value = project if project is not None else _env(env, "FLUXRUN_AGENT_PROJECT")
    if project_value is None or not str(project_value).strip():
        raise ConfigError(
            "FLUXRUN_AGENT_PROJECT is not set: name the project this agent serves, by its id on the FluxRun server "
            "(GET /v1/projects) or as workspace/project; grants for any other project are refused"
        )

    pinned = grant_key if grant_key is not None else _env(env, "FLUXRUN_AGENT_GRANT_KEY")
    source = server if server is not None else _env(env, "FLUXRUN_AGENT_SERVER")
    if pinned is not None:
        key_id, public = parse_grant_public_key(pinned)
        trust, fetched_from = "pinned", None
    elif source is not None:
        fetched = fetch_grant_key(source)
        key_id, public = parse_grant_public_key(fetched)
        trust, fetched_from = "trusted on first use", source.rstrip("/")
        log.warning(
            "grant key %s was fetched from %s and TRUSTED ON FIRST USE; pin it so a changed key is refused: "
            "FLUXRUN_AGENT_GRANT_KEY=%s",
            key_id,
            fetched_from,
            fetched,
        )
    else:
        raise ConfigError(
            "no grant key: set FLUXRUN_AGENT_GRANT_KEY=KEY_ID:BASE64 (GET /v1/grant-key on the FluxRun server shows "
            "it), or FLUXRUN_AGENT_SERVER=https://your-fluxrun-server to fetch it at start-up"
        )

    scrub_keys = _env(env, "FLUXRUN_SCRUB_KEYS")
    if scrubber is None:
        scrubber = Scrubber.from_config([k.strip() for k in scrub_keys.split(",") if k.strip()] if scrub_keys else None)

    audit = audit_log if audit_log is not None else _env(env, "FLUXRUN_AGENT_AUDIT_LOG")
    limit = max_bundle_bytes if max_bundle_bytes is not None else _env(env, "FLUXRUN_AGENT_MAX_BUNDLE_BYTES")
    nonces = nonce_store if nonce_store is not None else _env(env, "FLUXRUN_AGENT_NONCE_STORE")
    audit_path = Path(audit) if audit is not None else Path.cwd() / DEFAULT_AUDIT_LOG
    burst = refusal_burst if refusal_burst is not None else _env(env, "FLUXRUN_AGENT_REFUSAL_BURST")
    rate = refusal_rate if refusal_rate is not None else _env(env, "FLUXRUN_AGENT_REFUSAL_RATE")
    return AgentConfig(
        replay_key=key,
        grant_key_id=key_id,
        grant_public=public,
        grant_key_trust=trust,
        grant_key_server=fetched_from,
        project=str(project_value).strip(),
        origin=_origin(origin if origin is not None else _env(env, "FLUXRUN_AGENT_ORIGIN")),
        audit_log=audit_path,
        scrubber=scrubber,
        max_bundle_bytes=(
            DEFAULT_MAX_BUNDLE_BYTES if limit is None else _positive_int("FLUXRUN_AGENT_MAX_BUNDLE_BYTES", limit)
        ),
        nonce_store=Path(nonces) if nonces is not None else default_nonce_store(audit_path),
        refusal_burst=(
            DEFAULT_REFUSAL_BURST if burst is None else _positive_int("FLUXRUN_AGENT_REFUSAL_BURST", burst, "refusals")
        ),
        refusal_rate=DEFAULT_REFUSAL_RATE if rate is None else _positive_float("FLUXRUN_AGENT_REFUSAL_RATE", rate),
    )
