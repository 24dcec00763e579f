"""`fluxrun.init`, `flush` and `shutdown`: configuring and stopping the process-wide client."""

from __future__ import annotations

import os
from collections.abc import Iterable

from fluxrun._client import get_client, install_client, uninstall_client
from fluxrun._config import resolve_options
from fluxrun.scrub import Scrubber

__all__ = ["flush", "init", "shutdown"]


def init(
    dsn: str | None = None,
    *,
    directory: str | os.PathLike[str] | None = None,
    capture_key: str | os.PathLike[str] | None = None,
    sample_rate: float | None = None,
    scrub: Scrubber | Iterable[str] | None = None,
    max_body_size: int | None = None,
    release: str | None = None,
    environment: str | None = None,
    in_app_include: Iterable[str] | None = None,
    in_app_exclude: Iterable[str] | None = None,
    max_queue: int | None = None,
    enabled: bool | None = None,
) -> None:
    """Configure FluxRun and install its interceptors. Call once, early, before serving requests.

    Every option falls back to a `FLUXRUN_*` environment variable, then to a safe default:

    - `dsn` (`FLUXRUN_DSN`): server URL with the project token, `https://TOKEN@host/PROJECT`.
    - `directory` (`FLUXRUN_DIR`): local folder for bundles, used when no DSN is set (`.fluxrun/bundles`).
    - `capture_key` (`FLUXRUN_CAPTURE_KEY`): the app's key file from `fluxrun keys generate`. Without
      one FluxRun cannot seal bundles, says so once, and captures nothing.
    - `sample_rate` (`FLUXRUN_SAMPLE_RATE`): fraction of successful executions to keep too (default 0:
      failures only, meaning an exception or a 5xx answer).
    - `scrub` (`FLUXRUN_SCRUB_KEYS`, comma-separated): a `fluxrun.scrub.Scrubber`, or extra key names to
      mask in summaries on top of the defaults.
    - `max_body_size` (`FLUXRUN_MAX_BODY_SIZE`): bytes kept of each body (default 1 MiB); longer ones
      are recorded truncated and marked so.
    - `release`, `environment` (`FLUXRUN_RELEASE`, `FLUXRUN_ENVIRONMENT`): labels for triage.
    - `in_app_include`, `in_app_exclude`: module prefixes that refine what counts as the app's own code
      (for fingerprints, and for capturing `from time import time` style imports).
    - `max_queue` (`FLUXRUN_MAX_QUEUE`): kept executions waiting to be sealed; beyond it they are dropped
      and counted, never blocking a request.
    - `enabled` (`FLUXRUN_ENABLED`): false turns capture off without removing the code.

    Raises `ConfigError` (or `KeyFileError` for the key file) when a setting is invalid.
    """
    options = resolve_options(
        dsn=dsn,
        directory=directory,
        capture_key=capture_key,
        sample_rate=sample_rate,
        scrub=scrub,
        max_body_size=max_body_size,
        release=release,
        environment=environment,
        in_app_include=in_app_include,
        in_app_exclude=in_app_exclude,
        max_queue=max_queue,
        enabled=enabled,
    )
    install_client(options)


def flush(timeout: float = 2.0) -> bool:
    """Wait until every kept execution so far is sealed and written. False if `timeout` ran out."""
    client = get_client()
    return True if client is None else client.worker.flush(timeout)


def shutdown(timeout: float = 2.0) -> bool:
    """Flush, then restore every patched function and stop the background worker."""
    return uninstall_client(timeout)
