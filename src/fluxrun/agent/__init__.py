"""The customer agent: the one process that holds the replay key, unlocking and replaying bundles for
holders of a short-lived grant from the FluxRun server.

Run it standalone (`fluxrun agent`, uvicorn on loopback) or mount it in your own ASGI app::

    import fluxrun.agent

    app = FastAPI()
    fluxrun.agent.mount(app)                     # serves /_fluxrun/v1/{health,unlock,replay}

Settings come from keyword arguments or `FLUXRUN_AGENT_*` variables (see `resolve_config`). This module
imports no web framework until one of its functions is called, so `fluxrun.grant` stays light for
the server, which signs grants with it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from fluxrun.agent.config import AgentConfig

__all__ = ["DEFAULT_PATH", "create_app", "mount", "serve"]

DEFAULT_PATH = "/_fluxrun"


def _starlette_missing(exc: ImportError) -> Exception:
    from fluxrun.errors import FluxRunError

    return FluxRunError(
        f"the FluxRun agent needs {exc.name or 'starlette'} (and uvicorn to run standalone): "
        "pip install 'fluxrun[server]', or add starlette and uvicorn to your app"
    )


def create_app(config: AgentConfig | None = None, **settings: Any) -> Starlette:
    """The agent as a Starlette app. Pass an `AgentConfig`, or the keyword arguments of `resolve_config`."""
    from fluxrun.agent.config import resolve_config

    try:
        from fluxrun.agent.app import build_app
    except ImportError as exc:
        raise _starlette_missing(exc) from None
    return build_app(config if config is not None else resolve_config(**settings))


def mount(app: Any, path: str = DEFAULT_PATH, **settings: Any) -> Starlette:
    """Mount the agent at `path` in a FastAPI/Starlette app (a sub-application); return the agent app.

    Set-up happens here, not in a lifespan (mounted apps get none): the replay key is loaded and the grant
    key pinned or fetched before this returns, so a misconfigured agent fails the app's start-up.
    Replay runs in this process and, while it runs, blocks outgoing sockets process-wide; mount the agent
    in a process that serves no live traffic, or run it standalone, if that matters.
    """
    if not path.startswith("/") or path.endswith("/"):
        raise ValueError(f"path={path!r}: give a mount path like '/_fluxrun' (leading '/', no trailing '/')")
    agent = create_app(**settings)
    app.mount(path, agent, name="fluxrun-agent")
    return agent


def serve(
    host: str | None = None,
    port: int | None = None,
    *,
    announce: Callable[[str], None] | None = None,
    **settings: Any,
) -> None:
    """Run the agent standalone under uvicorn (loopback by default); blocks until stopped.

    `host`/`port` default to FLUXRUN_AGENT_HOST/FLUXRUN_AGENT_PORT, then 127.0.0.1:8401. `announce` gets
    one line saying what the agent serves and trusts, before it starts listening.
    """
    from fluxrun.agent.config import DEFAULT_HOST, DEFAULT_PORT, resolve_config
    from fluxrun.errors import ConfigError

    try:
        import uvicorn
    except ImportError as exc:
        raise _starlette_missing(exc) from None
    host = host or os.environ.get("FLUXRUN_AGENT_HOST") or DEFAULT_HOST
    raw_port = port if port is not None else os.environ.get("FLUXRUN_AGENT_PORT") or DEFAULT_PORT
    try:
        port = int(raw_port)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ConfigError(f"FLUXRUN_AGENT_PORT={raw_port!r} is not a port number (0-65535)")
    config = resolve_config(**settings)
    app = create_app(config)
    if announce is not None:
        trust = config.grant_key_trust + (f" from {config.grant_key_server}" if config.grant_key_server else "")
        announce(
            f"FluxRun agent on http://{host}:{port}  project {config.project}  "
            f"opens {', '.join(sorted(config.replay_key.recipients))}  grant key {config.grant_key_id} ({trust})  "
            f"CORS origin {config.origin or 'none'}  audit log {config.audit_log}"
        )
        if host not in ("127.0.0.1", "localhost", "::1"):
            announce(
                f"warning: listening on {host}, not loopback: put TLS in front of the agent, since it answers with "
                "decrypted payloads"
            )
    uvicorn.run(app, host=host, port=port, log_level="warning")
