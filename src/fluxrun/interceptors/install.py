"""One shared installation of every interceptor, counted: capture (`fluxrun.init`) and replay both use it.

The patches are the same for recording and replaying; what a wrapper does depends on the scope it
finds in the context variable. The last user to release the installation restores every original.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

import wrapt

from fluxrun._internal import InApp, is_fluxrun_file, is_library_file, is_stdlib_file, report_internal_error
from fluxrun.answering import serve_kind
from fluxrun.interceptors.aiohttp import AiohttpInterceptor
from fluxrun.interceptors.base import Interceptor, Patch, Patcher
from fluxrun.interceptors.clock import ClockInterceptor, package_rebinds
from fluxrun.interceptors.db_asyncpg import AsyncpgInterceptor
from fluxrun.interceptors.db_asyncpg_pool import AsyncpgPoolInterceptor
from fluxrun.interceptors.db_common import DEFAULT_ROW_LIMIT, DjangoConnectSeam, SqlalchemyConnectSeam
from fluxrun.interceptors.db_psycopg import PsycopgInterceptor
from fluxrun.interceptors.db_psycopg2 import Psycopg2Interceptor
from fluxrun.interceptors.db_psycopg_pool import PsycopgPoolInterceptor
from fluxrun.interceptors.db_sqlite import SqliteInterceptor
from fluxrun.interceptors.env import EnvInterceptor
from fluxrun.interceptors.http import HttpInterceptor
from fluxrun.interceptors.logs import LogsInterceptor
from fluxrun.interceptors.randomness import RandomnessInterceptor
from fluxrun.interceptors.redis import RedisInterceptor
from fluxrun.interceptors.redis_cluster import RedisClusterInterceptor
from fluxrun.interceptors.requests import RequestsInterceptor
from fluxrun.interceptors.smtp import SmtpInterceptor
from fluxrun.interceptors.threads import ThreadsInterceptor
from fluxrun.interceptors.timers import TimersInterceptor
from fluxrun.interceptors.unrecorded import UnrecordedInterceptor
from fluxrun.interceptors.urllib3 import Urllib3Interceptor

__all__ = ["Installation", "acquire", "release"]

DEFAULT_BODY_LIMIT = 1 << 20


class Installation:
    def __init__(self, in_app: InApp) -> None:
        self.in_app = in_app
        self.body_limit = DEFAULT_BODY_LIMIT
        self.db_row_limit = DEFAULT_ROW_LIMIT  # rows kept of one database result (max_db_rows)
        self.patcher = Patcher()
        self.clock = ClockInterceptor()
        self.interceptors: list[Interceptor] = [
            self.clock,
            TimersInterceptor(),
            RandomnessInterceptor(),
            EnvInterceptor(),
            LogsInterceptor(),
            ThreadsInterceptor(),
            UnrecordedInterceptor(),
        ]
        # Client libraries are patched once the app imports them, never imported by FluxRun: an app that does
        # not use Redis pays neither the import nor the memory. (factory, any of these modules triggers it)
        limit = self.current_body_limit
        self.libraries: list[tuple[Callable[[], Interceptor], tuple[str, ...]]] = [
            (lambda: HttpInterceptor(limit), ("httpx", "httpx2")),
            (lambda: RequestsInterceptor(limit), ("requests",)),
            (lambda: Urllib3Interceptor(limit), ("urllib3",)),
            (lambda: AiohttpInterceptor(limit), ("aiohttp",)),
            (SqliteInterceptor, ("sqlite3",)),
            (PsycopgInterceptor, ("psycopg", "sqlalchemy")),
            (PsycopgPoolInterceptor, ("psycopg_pool",)),
            (Psycopg2Interceptor, ("psycopg2",)),
            (AsyncpgInterceptor, ("asyncpg", "sqlalchemy")),
            (AsyncpgPoolInterceptor, ("asyncpg",)),
            (RedisInterceptor, ("redis",)),
            (RedisClusterInterceptor, ("redis",)),
            (SmtpInterceptor, ("smtplib", "aiosmtplib")),
            (SqlalchemyConnectSeam, ("sqlalchemy.pool.base",)),
            (DjangoConnectSeam, ("django.db.backends.base.base",)),
        ]
        self._patched: set[tuple[int, str]] = set()
        self._build_lock = threading.RLock()
        self.plugins: list[Interceptor] = []  # from the `fluxrun.interceptors` entry point group, at apply()
        self._rebind: dict[int, Any] = {}
        self._scanned: set[str] = set()
        self.modules_seen = 0
        self._scan_lock = threading.Lock()

    def current_body_limit(self) -> int:
        return self.body_limit

    def apply(self) -> None:
        for interceptor in self.interceptors:
            self._rebind.update(interceptor.rebind())
        for interceptor in self.interceptors:
            for patch in interceptor.patches():
                self._apply_once(patch)
        for factory, triggers in self.libraries:
            if any(name in sys.modules for name in triggers):
                self.build(factory)
            for name in triggers:
                if name not in sys.modules:
                    _watch(name)
        self.plugins = plugin_interceptors()
        for plugin in self.plugins:
            self.apply_plugin(plugin)
        self.rescan(running=_modules_running())

    def apply_plugin(self, plugin: Interceptor) -> None:
        """A plugin's patches, all or none: a plugin that fails is reported once and the app runs on without it."""
        name = f"interceptor plugin {getattr(plugin, 'kind', '?')!r}"
        try:
            patches = list(plugin.patches())
            rebind = dict(plugin.rebind()) if callable(getattr(plugin, "rebind", None)) else {}
            if not all(isinstance(p, Patch) for p in patches):
                raise TypeError("patches() must return a list of fluxrun.interceptors.api.Patch")
        except Exception as exc:
            report_internal_error(name, exc)
            return
        applied = Patcher()
        try:
            for patch in patches:
                applied.apply(patch)
        except Exception as exc:
            applied.restore()
            report_internal_error(name, exc)
            return
        self.patcher._applied.extend(applied._applied)  # restored with the rest, in reverse order
        self._rebind.update(rebind)

    def _apply_once(self, patch: Patch) -> None:
        key = (id(patch.owner), patch.attribute)
        if key not in self._patched:
            self._patched.add(key)
            self.patcher.apply(patch)

    def build(self, factory: Callable[[], Interceptor]) -> None:
        """Build a client library's interceptor now that its library is imported, and apply what it adds."""
        with self._build_lock:
            try:
                interceptor = factory()
                self._rebind.update(interceptor.rebind())
                for patch in interceptor.patches():
                    self._apply_once(patch)
                self.interceptors.append(interceptor)
            except Exception as exc:
                report_internal_error(f"intercepting {factory}", exc)

    def imported(self, name: str) -> None:
        """A watched library was just imported: build the interceptors it triggers."""
        for factory, triggers in self.libraries:
            if name in triggers:
                self.build(factory)
        self.modules_seen = 0  # rebind `from x import y` names in app modules imported since

    def rescan_if_needed(self) -> None:
        if len(sys.modules) != self.modules_seen:
            self.rescan()

    def rescan(self, *, running: frozenset[str] = frozenset()) -> None:
        """Rebind `from time import time`-style names in the app's own modules (new ones only).

        A module still being imported is left for a later scan (the next execution's start), and so are those
        named in `running` (whose top-level code is running: `fluxrun.init()` is called at the top of the app's
        module): the classes it goes on to declare must see the real `datetime` (SQLAlchemy's `Mapped[datetime]`
        and pydantic look a field's type up by the class itself)."""
        with self._scan_lock:
            modules = list(sys.modules.items())
            self.modules_seen = len(modules)
            for name, module in modules:
                if name in self._scanned or module is None:
                    continue
                if name in running or getattr(getattr(module, "__spec__", None), "_initializing", False) is True:
                    self.modules_seen = -1  # not scanned yet: the next execution's start scans again
                    continue
                self._scanned.add(name)
                if not self.in_app.module(name, getattr(module, "__file__", None)):
                    reader = self.clock.reader_patch(name, module)
                    if reader is not None:
                        self.patcher.apply(reader)
                    self._rebind_package_clock(name, module)
                    continue
                try:
                    for attr, value in list(vars(module).items()):
                        replacement = self._rebind.get(id(value))
                        if replacement is not None and not attr.startswith("__"):
                            self.patcher.apply(Patch(module, attr, replacement))
                except Exception as exc:
                    report_internal_error(f"rebinding names in {name}", exc)

    def _rebind_package_clock(self, name: str, module: Any) -> None:
        """An installed package's `datetime.now()` (PyJWT's expiry check) is served from the tape too."""
        try:
            cached = _package_clock.get(name)
            if cached is None or cached[0] is not module:  # reading a module's code is slow: once a process
                filename = getattr(module, "__file__", None)
                package = (
                    isinstance(filename, str)
                    and bool(filename)
                    and is_library_file(filename)
                    and not is_stdlib_file(filename)
                    and not is_fluxrun_file(filename)
                )
                cached = (module, package_rebinds(module, name) if package else [])
                _package_clock[name] = cached
            for attr, replacement in cached[1]:
                self.patcher.apply(Patch(module, attr, replacement))
        except Exception as exc:
            report_internal_error(f"rebinding the clock in {name}", exc)

    def restore(self) -> None:
        self.patcher.restore()


def _modules_running() -> frozenset[str]:
    """The modules whose top-level code is running in this thread (importing, or `__main__` run as a script)."""
    names = set()
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>":
            name = frame.f_globals.get("__name__")
            if isinstance(name, str):
                names.add(name)
        frame = frame.f_back  # type: ignore[assignment]
    return frozenset(names)


PLUGIN_GROUP = "fluxrun.interceptors"
# Per process: which installed modules' `datetime` is rebound (name -> (module, rebinds)), and the plugin
# entry points found for a given sys.path. Every replay acquires the installation again; neither changes.
_package_clock: dict[str, tuple[Any, list[tuple[str, Any]]]] = {}
_plugin_entries: tuple[tuple[str, ...], list[Any]] | None = None


def plugin_interceptors() -> list[Interceptor]:
    """The interceptors other packages register in the `fluxrun.interceptors` entry point group.

    An entry point names a class or factory (called with no arguments) or an interceptor object; see
    `fluxrun.interceptors.api`. One that cannot be loaded or is not an interceptor is reported once
    (`report_internal_error`) and left out: a broken plugin never stops the app."""
    from importlib.metadata import entry_points

    global _plugin_entries
    path = tuple(sys.path)
    if _plugin_entries is not None and _plugin_entries[0] == path:
        found = _plugin_entries[1]
    else:
        try:
            found = list(entry_points(group=PLUGIN_GROUP))
        except Exception as exc:
            report_internal_error("listing interceptor plugins", exc)
            return []
        _plugin_entries = (path, found)
    plugins: list[Interceptor] = []
    seen: set[tuple[str, str]] = set()
    for entry in found:
        if (entry.name, entry.value) in seen:  # the same distribution found twice on sys.path
            continue
        seen.add((entry.name, entry.value))
        try:
            target = entry.load()
            factory = isinstance(target, type) or (callable(target) and not hasattr(target, "patches"))
            plugin = target() if factory else target
            if not isinstance(getattr(plugin, "kind", None), str) or not callable(getattr(plugin, "patches", None)):
                raise TypeError(f"{entry.value} is not an interceptor: it needs a `kind` string and `patches()`")
            serve_kind(plugin.kind)
            plugins.append(plugin)
        except Exception as exc:
            report_internal_error(f"interceptor plugin {entry.name} ({entry.value})", exc)
    return plugins


_lock = threading.Lock()
_installation: Installation | None = None
_users = 0
_watched: set[str] = set()


def _watch(name: str) -> None:
    """Call the installation of the moment when `name` is first imported (one hook per module a process)."""
    if name not in _watched:
        _watched.add(name)
        wrapt.register_post_import_hook(_on_import, name)


def _on_import(module: Any) -> None:
    installation = _installation
    if installation is not None:
        installation.imported(module.__name__)


def acquire(in_app: InApp) -> Installation:
    """Install the interceptors if nobody has yet; count this user either way."""
    global _installation, _users
    with _lock:
        if _installation is None:
            installation = Installation(in_app)
            installation.apply()
            _installation = installation
        _users += 1
        return _installation


def release() -> None:
    global _installation, _users
    with _lock:
        _users = max(0, _users - 1)
        if _users == 0 and _installation is not None:
            _installation.restore()
            _installation = None


def current_installation() -> Installation | None:
    return _installation
