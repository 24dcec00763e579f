"""`fluxrun.init`, `flush`, `shutdown` and `stats`: configuring, draining and watching the process-wide client."""

from __future__ import annotations

import os
from collections.abc import Iterable

from fluxrun._client import get_client, install_client, uninstall_client
from fluxrun._client import stats as client_stats
from fluxrun._config import resolve_options
from fluxrun.scrub import Scrubber

__all__ = ["flush", "init", "shutdown", "stats"]


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
    max_db_rows: int | None = None,
) -> None:
    """Configure FluxRun and install its interceptors. Call once, early, before serving requests.

    Every option falls back to a `FLUXRUN_*` environment variable, then to a safe default:

    - `dsn` (`FLUXRUN_DSN`): server URL with the project token, `https://TOKEN@host/PROJECT` (`http://` only
      for loopback). Bundles are then sent from a background thread in batches, retried with backoff, and
      kept in a bounded spool (`<directory>/spool`) while the server is unreachable.
    - `directory` (`FLUXRUN_DIR`): local folder for bundles, used when no DSN is set (`.fluxrun/bundles`);
      with a DSN it holds the spool.
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
      and counted, never blocking a request. With a DSN it also bounds sealed bundles waiting to be sent
      (beyond it they go to the spool).
    - `max_db_rows` (`FLUXRUN_MAX_DB_ROWS`): rows recorded of one database result (default 10,000); a
      longer result is recorded truncated and marked, and replay refuses to serve reads past it.
    - `enabled` (`FLUXRUN_ENABLED`): false turns capture off without removing the code.

    Raises `ConfigError` (or `KeyFileError` for the key file) when a setting is invalid.
    """
    arguments = dict(locals())  # exactly the settings: each is defined once, in fluxrun._config.Options
    install_client(resolve_options(**arguments))


def flush(timeout: float = 2.0) -> bool:
    """Wait until every kept execution so far is sealed and delivered: written to the folder, or, with a DSN,
    acknowledged by the server or safe in the spool. False if `timeout` ran out first."""
    client = get_client()
    return True if client is None else client.flush(timeout)


def shutdown(timeout: float = 2.0) -> bool:
    """Flush within `timeout`, then restore every patched function and stop the background threads.

    With a DSN, bundles the server could not take in time are left in the spool for the next start.
    """
    return uninstall_client(timeout)


def stats() -> dict[str, int]:
    """FluxRun's counters, so losses are visible: a flat dict of whole numbers (bundles unless named).

    `queued` (kept executions accepted for sealing), `sealed`, `failed` (sealing failed), `sent`
    (acknowledged by the server), `batches` (requests acknowledged), `retried` (bundles sent again after
    a failed attempt), `spooled`, `delivered_from_spool` (part of `sent`), `dropped` (the total) and one
    `dropped_<reason>` per reason: `queue_full`, `spool_full`, `spool_error`, `spool_unreadable`,
    `http_<status>` (e.g. `http_401`: a bad token), `rejected_<reason>` (e.g. `rejected_tampered`). Gauges:
    `pending` (waiting to be sent), `spool_files`, `spool_bytes`. After `shutdown`, the final counters.
    """
    return client_stats()
