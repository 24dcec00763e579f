"""The process-wide FluxRun client: options, installed interceptors, the sealer and the sink.

`fluxrun.init` builds one and installs every interceptor; `fluxrun.shutdown` flushes and restores
every patched function. Executions call `begin`/`end` (through the decorator and middlewares).
Sealed bundles go to the server named by the DSN (`HttpSink`), else to the local folder (`FolderSink`).
"""

from __future__ import annotations

import random
import sys
import threading
import uuid
from contextvars import Token
from time import monotonic  # bound at import: FluxRun's own bookkeeping never calls a patched clock

from fluxrun._config import Options
from fluxrun._context import Scope, current_owner, scope_var
from fluxrun._internal import InApp, logger, real_urandom, report_internal_error, set_app_modules, wall_time
from fluxrun._platform import warm_platform_probe
from fluxrun._replay_mode import replaying_here
from fluxrun.bundle import Sealer, load_capture_key
from fluxrun.interceptors import install
from fluxrun.model.export import SDK, build_payload, build_summary
from fluxrun.model.recording import Recording
from fluxrun.shipping.base import BackgroundWorker, Sink, after_fork_in_child
from fluxrun.shipping.folder import FolderSink
from fluxrun.shipping.http import HttpSink, ShipConfig, parse_dsn

__all__ = ["Client", "begin", "end", "get_client", "install_client", "stats", "uninstall_client"]

# Counters `fluxrun.stats()` always has, zero until something happens; reasons appear as `dropped_<reason>`.
STAT_NAMES = (
    "queued", "sealed", "failed", "dropped_queue_full", "sent", "batches", "retried", "spooled",
    "delivered_from_spool", "dropped", "pending", "spool_files", "spool_bytes",
)  # fmt: skip


# HTTP clients an app may import. One counts as a gap only if it is imported and no installed interceptor
# patched it (`Interceptor.modules`): an SDK that imports aiohttp without using it is not a gap once it is covered.
UNINTERCEPTED_HTTP_CLIENTS = (
    "requests",
    "urllib3",
    "aiohttp",
    "httpx",
    "httpx2",
    "pycurl",
    "httplib2",
    "tornado.httpclient",
    "treq",
)
# The standard library's clients are imported by much else, so they count only when the app's own code uses them.
STDLIB_HTTP_CLIENTS = ("urllib.request", "http.client")

_client: Client | None = None


class _ClientLock:
    """Guards installing and removing the client; replaced in a forked child (a thread may have held it)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def _after_fork_in_child(self) -> None:
        self.lock = threading.Lock()


_client_lock = _ClientLock()
after_fork_in_child(_client_lock)
_last_stats: dict[str, int] = {}  # the final counters of the client shut down last


def make_sink(options: Options) -> Sink:
    """The server when a DSN is set (spooling under the bundle folder), else the bundle folder itself."""
    if options.dsn is None:
        return FolderSink(options.directory)
    config = ShipConfig(spool_dir=options.directory / "spool", max_queue=options.max_queue)
    return HttpSink(parse_dsn(options.dsn), config)


class Client:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.in_app = InApp(options.in_app_include, options.in_app_exclude)
        self.sealer: Sealer | None = None
        if options.capture_key is not None:
            # The DSN's path names the project (WORKSPACE/PROJECT) and is signed into every bundle; without a
            # DSN the bundles name none: they open and replay locally, and no server accepts them.
            project = parse_dsn(options.dsn).project if options.dsn else ""
            self.sealer = Sealer(
                load_capture_key(options.capture_key), sdk=f"{SDK['name']}/{SDK['version']}", project=project
            )
        elif not replaying_here():  # a replay runs the app's own init(); it needs no capture key
            logger.warning(
                "FluxRun has no capture key, so it cannot seal bundles and will not capture. "
                "Run `fluxrun keys generate DIR` and set FLUXRUN_CAPTURE_KEY=DIR/capture.key "
                "(or fluxrun.init(capture_key=...))."
            )
        self.sink: Sink = make_sink(options)
        self.worker = BackgroundWorker(self._seal_and_write, max_queue=options.max_queue, name="fluxrun-shipper")
        after_fork_in_child(self)
        self.installation: install.Installation | None = None
        self._sampler = random.Random()
        self.written: list[str] = []  # file paths, newest last (bounded), for tests and the CLI
        # read on every request: an attribute, not a property (options are frozen, the sealer is set above)
        self.capturing = options.enabled and self.sealer is not None

    # -- install ----------------------------------------------------------------------------------
    def install(self) -> None:
        warm_platform_probe()  # `uname -p` now, not inside a request an SDK makes (see fluxrun._platform)
        set_app_modules(self.options.in_app_include)
        self.installation = install.acquire(self.in_app)
        self.installation.body_limit = self.options.max_body_size
        self.installation.db_row_limit = self.options.max_db_rows
        self._report_gaps()

    def _intercepted_modules(self) -> set[str]:
        """Names of the client modules an installed interceptor actually patched."""
        names: set[str] = set()
        for interceptor in self.installation.interceptors if self.installation is not None else ():
            for module in getattr(interceptor, "modules", ()):
                name = module if isinstance(module, str) else getattr(module, "__name__", None)
                if name:
                    names.add(name)
        return names

    def _report_gaps(self) -> None:
        covered = self._intercepted_modules()
        gaps = [name for name in UNINTERCEPTED_HTTP_CLIENTS if name in sys.modules and name not in covered]
        stdlib = {id(m): name for name in STDLIB_HTTP_CLIENTS if (m := sys.modules.get(name)) is not None}
        if stdlib:
            for name, module in list(sys.modules.items()):
                if module is None or not self.in_app.module(name, getattr(module, "__file__", None)):
                    continue
                for value in list(vars(module).values()):
                    owner = getattr(value, "__module__", None) if callable(value) else None
                    hit = stdlib.get(id(value)) or (owner if owner in STDLIB_HTTP_CLIENTS else None)
                    if hit and hit not in gaps:
                        gaps.append(hit)
        if gaps and not replaying_here():  # replay blocks every call it cannot serve, and says so
            logger.warning(
                "FluxRun does not intercept these imported HTTP clients: %s. Calls made through them inside a "
                "captured execution are not recorded, and replay will block them. Use an intercepted client "
                "(httpx, requests, urllib3, aiohttp), or declare the call with @fluxrun.boundary.",
                ", ".join(gaps),
            )

    def uninstall(self) -> None:
        if self.installation is not None:
            self.installation = None
            install.release()
            set_app_modules(())

    # -- executions -------------------------------------------------------------------------------
    def keep(self, recording: Recording) -> bool:
        outcome = recording.outcome
        if outcome.get("kind") == "error":
            return True
        status = outcome.get("status")
        if isinstance(status, int) and status >= 500:
            return True
        rate = self.options.sample_rate
        return rate > 0 and self._sampler.random() < rate

    def _seal_and_write(self, item: tuple[Recording, int]) -> None:
        recording, duration_ns = item
        assert self.sealer is not None
        bundle_id = uuid.UUID(bytes=real_urandom(16), version=4).hex
        payload = build_payload(
            recording,
            bundle_id=bundle_id,
            release=self.options.release,
            environment=self.options.environment,
            app_modules=self.options.in_app_include,
        )
        summary = build_summary(payload, scrubber=self.options.scrubber, duration_ns=duration_ns)
        data = self.sealer.seal(summary=summary, payload=payload, bundle_id=bundle_id)
        path = self.sink.write(f"{payload['started_at'][:19].replace(':', '').replace('-', '')}-{bundle_id}", data)
        self.worker.stats["sealed"] += 1
        if path is not None:
            self.written.append(str(path))
            del self.written[:-1000]

    # -- delivery ---------------------------------------------------------------------------------
    def flush(self, timeout: float) -> bool:
        """Sealed, then delivered or spooled (the folder sink is done once sealed): False if `timeout` ran out."""
        deadline = monotonic() + timeout
        sealed = self.worker.flush(timeout)
        return self.sink.flush(max(0.0, deadline - monotonic())) and sealed

    def close(self, timeout: float) -> bool:
        deadline = monotonic() + timeout
        sealed = self.worker.close(timeout)
        return self.sink.close(max(0.0, deadline - monotonic())) and sealed

    def stats(self) -> dict[str, int]:
        counts = dict.fromkeys(STAT_NAMES, 0)
        counts.update(self.worker.stats)
        counts.update(self.sink.stats())
        counts["dropped"] = sum(v for k, v in counts.items() if k.startswith("dropped_"))
        return counts

    def _after_fork_in_child(self) -> None:
        # The child would otherwise sample exactly like its siblings, and could inherit the sealer's
        # lock held by the parent's sealing thread at the moment of the fork.
        self._sampler.seed(real_urandom(16))
        if self.sealer is not None:
            self.sealer.reset_after_fork()


def get_client() -> Client | None:
    return _client


def install_client(options: Options) -> Client:
    global _client
    with _client_lock.lock:
        client = Client(options)  # a bad DSN raises here, before the running client is touched
        if _client is not None:
            _client.close(2.0)
            _client.uninstall()
            _client = None
        client.install()
        _client = client
        return client


def uninstall_client(timeout: float) -> bool:
    global _client, _last_stats
    with _client_lock.lock:
        client, _client = _client, None
    if client is None:
        return True
    flushed = client.close(timeout)
    client.uninstall()
    try:
        _last_stats = client.stats()
    except Exception as exc:
        report_internal_error("reading the counters", exc)
    return flushed


def stats() -> dict[str, int]:
    """The current client's counters; after `shutdown`, the last client's final ones; zeros before `init`."""
    client = _client
    if client is not None:
        try:
            return client.stats()
        except Exception as exc:
            report_internal_error("reading the counters", exc)
    return dict(_last_stats) if _last_stats else dict.fromkeys(STAT_NAMES, 0)


def begin(execution: str, entry: str | None) -> tuple[Client, Recording, Token[Scope | None]] | None:
    """Start capturing an execution in the current context; None when FluxRun is not capturing."""
    client = _client
    if client is None or not client.capturing:
        return None
    active = scope_var.get()
    if active is not None and active.session is not None:
        return None  # replaying: the replay runs the code, nothing is captured again
    try:
        installation = client.installation
        if installation is not None and len(sys.modules) != installation.modules_seen:
            installation.rescan()  # rebind `from time import time` in app modules imported since
        recording = Recording(execution, entry, wall_time())
        token = scope_var.set(Scope(recording, "0", current_owner()))  # Scope.root without its replay half
        return client, recording, token
    except Exception as exc:
        report_internal_error("starting a capture", exc)
        return None


def end(
    started: tuple[Client, Recording, Token[Scope | None]], *, reset: bool = True, kept: bool | None = None
) -> None:
    """Stop capturing; hand the recording to the background worker if it is worth keeping."""
    client, recording, token = started
    if reset:
        try:
            scope_var.reset(token)
        except Exception as exc:  # reset from another context: the execution moved tasks
            report_internal_error("ending a capture", exc)
            scope_var.set(None)
    try:
        recording.close()  # the execution's own calls end here, whatever its leftover tasks call later
    except Exception as exc:
        report_internal_error("closing a capture", exc)
    try:
        if kept if kept is not None else client.keep(recording):
            client.worker.submit((recording, recording.elapsed_ns()))
    except Exception as exc:
        report_internal_error("finishing a capture", exc)
