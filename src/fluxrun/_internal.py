"""SDK plumbing that must never hurt the host app: one-time error logging, counters, code locations.

Everything FluxRun does on the app's behalf runs inside `try/except` blocks that call
`report_internal_error`, in the manner of sentry-python's `capture_internal_exceptions`.
"""

from __future__ import annotations

import logging
import os
import site
import sys
import sysconfig
import threading
from collections import Counter
from os import urandom as real_urandom
from time import perf_counter_ns as perf_ns
from time import time as wall_time
from types import CodeType, FrameType
from typing import Any

# The unpatched clock and entropy, bound before any patch: FluxRun's own bookkeeping must never
# call a patched function while a capture is active, or it would record itself.
__all__ = ["logger", "perf_ns", "real_urandom", "report_internal_error", "wall_time"]

logger = logging.getLogger("fluxrun")

_reported: set[str] = set()
_report_lock = threading.Lock()
internal_errors: Counter[str] = Counter()


def report_internal_error(where: str, exc: BaseException) -> None:
    """Log an SDK failure once per location and count every occurrence; never raise."""
    try:
        internal_errors[where] += 1
        with _report_lock:
            if where in _reported:
                return
            _reported.add(where)
        logger.warning(
            "FluxRun failed in %s and stepped aside; the app's call went ahead as if FluxRun were absent "
            "(reported once per location): %s: %s",
            where,
            type(exc).__name__,
            exc,
        )
    except Exception:  # pragma: no cover - logging itself failed; nothing sensible is left to do
        pass


def _library_roots() -> tuple[str, ...]:
    roots: set[str] = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            roots.add(os.path.realpath(path))
    try:
        for path in site.getsitepackages():
            roots.add(os.path.realpath(path))
    except AttributeError:  # pragma: no cover - virtualenv's old site.py
        pass
    user_site = getattr(site, "USER_SITE", None)
    if user_site:
        roots.add(os.path.realpath(user_site))
    return tuple(sorted(r.rstrip(os.sep) + os.sep for r in roots))


def _stdlib_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib") if paths.get(k)}
    return tuple(sorted(r.rstrip(os.sep) + os.sep for r in roots))


LIBRARY_ROOTS = _library_roots()
STDLIB_ROOTS = _stdlib_roots()
# Where installed packages live. Under pyenv and in the official Docker images they sit inside the
# standard library's folder (`lib/python3.11/site-packages`), so a prefix test alone cannot tell them apart.
SITE_ROOTS = tuple(sorted(set(LIBRARY_ROOTS) - set(STDLIB_ROOTS)))
FLUXRUN_ROOT = os.path.dirname(os.path.realpath(__file__)) + os.sep
PLUGIN_ROOT = os.path.join(os.path.dirname(FLUXRUN_ROOT.rstrip(os.sep)), "pytest_fluxrun") + os.sep

_real_cache: dict[str, str] = {}


def _real(filename: str) -> str:
    real = _real_cache.get(filename)
    if real is None:
        real = os.path.realpath(filename) if filename and not filename.startswith("<") else filename
        _real_cache[filename] = real
    return real


def is_fluxrun_file(filename: str) -> bool:
    real = _real(filename)
    return real.startswith(FLUXRUN_ROOT) or real.startswith(PLUGIN_ROOT)


def is_stdlib_file(filename: str) -> bool:
    """The standard library's own files, not installed packages (wherever the layout puts them)."""
    if filename.startswith("<frozen"):
        return True
    real = _real(filename)
    return real.startswith(STDLIB_ROOTS) and not real.startswith(SITE_ROOTS)


def is_library_file(filename: str) -> bool:
    """The standard library or an installed package: code whose own clock, env and randomness calls
    are its internals, not the app's IO."""
    return filename.startswith("<frozen") or _real(filename).startswith(LIBRARY_ROOTS)


class InApp:
    """Decides which code is the app's own: not the standard library, not site-packages, not FluxRun.

    Users refine it with module prefixes (`in_app_include` wins over `in_app_exclude`).
    """

    def __init__(self, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> None:
        self.include = include
        self.exclude = exclude
        self._modules: dict[str, bool] = {}

    def module(self, name: str, filename: str | None) -> bool:
        cached = self._modules.get(name)
        if cached is not None:
            return cached
        result = self._decide(name, filename)
        self._modules[name] = result
        return result

    def _decide(self, name: str, filename: str | None) -> bool:
        if any(name == p or name.startswith(p + ".") for p in self.include):
            return True
        if any(name == p or name.startswith(p + ".") for p in self.exclude):
            return False
        if name.split(".", 1)[0] in ("fluxrun", "pytest_fluxrun", "_pytest", "pytest", "pluggy"):
            return False
        if not filename or filename.startswith("<"):
            return name == "__main__"
        if not os.path.isabs(filename):
            # a compiled module's frames name their source as it was built (SQLAlchemy's Cython code:
            # `lib/sqlalchemy/engine/_result_cy.py`), not where it is installed: where the module is loaded from
            loaded_from = getattr(sys.modules.get(name), "__file__", None)
            if isinstance(loaded_from, str) and os.path.isabs(loaded_from):
                filename = loaded_from
        real = _real(filename)
        return not real.startswith(LIBRARY_ROOTS) and not is_fluxrun_file(real)

    def frame(self, frame: FrameType) -> bool:
        return self.module(frame.f_globals.get("__name__", ""), frame.f_code.co_filename)


# Frames inside these files are the public entry points of the patched APIs themselves
# (os.getenv -> Mapping.get -> _Environ.__getitem__), so the caller is looked for above them.
_PLUMBING_MODULES = ("os", "collections.abc", "_collections_abc", "random", "uuid", "secrets", "contextlib")
_PLUMBING_PACKAGES = ("wrapt", "httpx", "httpx2", "httpcore", "httpcore2")
# HTTP clients whose calls are recorded whole: a clock read inside one (httpx timing a streamed response's
# close) belongs to the client, not to the app line that the fetch's site skips up to.
_CLIENT_PACKAGES = ("httpx", "httpx2", "httpcore", "httpcore2")
_client_codes: dict[int, CodeType] = {}
# Caches keyed by id(code): hashing a code object hashes its whole body on every call.
# Each entry keeps the code object itself, so an id reused after garbage collection cannot match.
_plumbing_cache: dict[int, tuple[CodeType, bool]] = {}
_library_code_cache: dict[int, tuple[CodeType, bool]] = {}


def is_plumbing(frame: FrameType) -> bool:
    code = frame.f_code
    entry = _plumbing_cache.get(id(code))
    if entry is not None and entry[0] is code:
        return entry[1]
    module = frame.f_globals.get("__name__", "")
    result = (
        module in _PLUMBING_MODULES
        or module.split(".", 1)[0] in _PLUMBING_PACKAGES
        or is_fluxrun_file(code.co_filename)
    )
    _plumbing_cache[id(code)] = (code, result)
    return result


def caller_frame(depth: int = 2) -> FrameType | None:
    """The frame that called the patched API, skipping the API's own wrappers (os.getenv, etc.)."""
    try:
        frame: FrameType | None = sys._getframe(depth)
    except ValueError:
        return None
    while frame is not None and is_plumbing(frame):
        frame = frame.f_back
    return frame


# Modules the user declared the app's own (`in_app_include`), even when they are installed packages.
_app_modules: tuple[str, ...] = ()


def app_modules() -> tuple[str, ...]:
    return _app_modules


def set_app_modules(include: tuple[str, ...]) -> None:
    """Count these modules' own IO as the app's (an app installed into site-packages, a vendored client)."""
    global _app_modules
    if include != _app_modules:
        _app_modules = include
        _library_code_cache.clear()
        verdicts.clear()
        _frame_traits.clear()
        _skipped_files.clear()
        _app_files.clear()


# Per code object: (code, is FluxRun's own, is a library's internals) for the frame walks of recorded calls
# (`app_frame` in interceptors/api.py and db_common.py): one dict lookup per frame instead of two calls.
_frame_traits: dict[int, tuple[CodeType, bool, bool]] = {}


def frame_traits(frame: FrameType) -> tuple[CodeType, bool, bool]:
    """(code, is FluxRun's file, `frame_is_library`) of `frame`, cached per code object."""
    code = frame.f_code
    entry = _frame_traits.get(id(code))
    if entry is None or entry[0] is not code:
        entry = (code, is_fluxrun_file(code.co_filename), frame_is_library(frame))
        _frame_traits[id(code)] = entry
    return entry


def first_app_frame(frame: FrameType | None, *, skip_generated: bool = False) -> FrameType | None:
    """From `frame` up, the nearest frame of the app's own code (past FluxRun and the internals of the standard
    library and installed packages), else the nearest frame that is not FluxRun's. `skip_generated`: code
    compiled from a string (`<sqlalchemy generated ...>`) does not count as the app's either.

    One set lookup per frame, by file (a file's frames share a verdict; its name's hash is cached): this walk
    runs for every recorded call (SQLAlchemy's six frames for each statement), and `in` on a set costs no
    call, where a lookup by code object would cost an `id()` and a check more. The inner loop walks past the
    files known to be walked past, twelve bytecodes a frame; walking off the top (`None.f_code`) ends it."""
    skipped, app = _skipped_files, _app_files
    walk: Any = frame
    try:
        while True:
            while (name := walk.f_code.co_filename) in skipped:
                walk = walk.f_back
            if name in app or _file_verdict(walk, skip_generated) == _APP_FILE:
                return walk  # type: ignore[no-any-return]
            walk = walk.f_back
    except AttributeError:
        pass  # no app frame (a library's own thread): the nearest frame that is not FluxRun's
    while frame is not None and frame_traits(frame)[1]:
        frame = frame.f_back
    return frame


# Per file, for `first_app_frame`: FluxRun's own, a library's internals, or the app's; the files found so far
# of the first two kinds (walked past), and of the app
_FLUXRUN_FILE, _LIBRARY_FILE, _APP_FILE = 0, 1, 2
_skipped_files: set[str] = set()
_app_files: set[str] = set()


def _file_verdict(frame: FrameType, skip_generated: bool) -> int:
    _code, fluxrun, library = frame_traits(frame)
    verdict = _FLUXRUN_FILE if fluxrun else _LIBRARY_FILE if library else _APP_FILE
    filename = frame.f_code.co_filename
    if filename.startswith("<"):  # code compiled from a string: one name for many modules, never cached
        return _LIBRARY_FILE if skip_generated and verdict == _APP_FILE else verdict
    (_app_files if verdict == _APP_FILE else _skipped_files).add(filename)
    return verdict


def _declared_app(frame: FrameType) -> bool:
    if not _app_modules:
        return False
    name = frame.f_globals.get("__name__", "")
    return any(name == p or name.startswith(p + ".") for p in _app_modules)


def frame_is_library(frame: FrameType) -> bool:
    """True for the internals of the standard library and installed packages (asyncio's clock, anyio's
    checkpoints, a telemetry check's env reads): their own IO is not the app's, at capture and replay alike."""
    code = frame.f_code
    entry = _library_code_cache.get(id(code))
    if entry is not None and entry[0] is code:
        return entry[1]
    result = is_library_file(code.co_filename) and not _declared_app(frame)
    _library_code_cache[id(code)] = (code, result)
    return result


SiteRef = tuple[str, CodeType, int]  # module, code, instruction offset (`frame.f_lasti`)

# Who made a read, per code object, in one dict lookup (the hot path of every recorded call):
# (code, verdict, module). The tape decides what the app can observe, wherever the read happens:
# - APP: the app's own code. Recorded; at replay served from the recording, and a read it lacks diverges.
# - PACKAGE: an installed package (an SDK reading its key, PyJWT's clock, a retry's jitter and sleep).
#   Recorded; at replay served from its own per-call-site stream, and answered live (sleeps: at once) when
#   that stream has nothing left, since a framework may read its clock more often in a test than in a server.
# - LIBRARY: the standard library's machinery (asyncio's loop clock, logging's timestamps, tempfile).
#   Clock and randomness stay real; env reads are recorded all the same (env is a snapshot of every key).
PLUMBING, LIBRARY, APP, PACKAGE = 0, 1, 2, 3
verdicts: dict[int, tuple[CodeType, int, str]] = {}


def _verdict(frame: FrameType) -> tuple[CodeType, int, str]:
    code = frame.f_code
    if is_plumbing(frame):
        verdict = PLUMBING
        if frame.f_globals.get("__name__", "").split(".", 1)[0] in _CLIENT_PACKAGES:
            _client_codes[id(code)] = code
    elif not frame_is_library(frame):
        verdict = APP
    else:
        verdict = LIBRARY if is_stdlib_file(code.co_filename) else PACKAGE
    entry = (code, verdict, frame.f_globals.get("__name__", "?"))
    verdicts[id(code)] = entry
    return entry


def reader(frame: FrameType | None) -> int:
    """Who made a read whose caller frame is `frame` (plumbing skipped): `APP`, `PACKAGE` or `LIBRARY`."""
    while frame is not None:
        code = frame.f_code
        entry = verdicts.get(id(code))
        if entry is None or entry[0] is not code:
            entry = _verdict(frame)
        if entry[1] != PLUMBING:
            return entry[1]
        if _client_codes.get(id(code)) is code:
            return LIBRARY  # inside an intercepted client's own code: part of its call, not the app's read
        frame = frame.f_back
    return LIBRARY


def app_site(depth: int) -> SiteRef | None:
    """The caller's site (`site_ref`), skipping plumbing frames, for the app's code or an installed
    package's (both are recorded); None for the standard library's machinery."""
    try:
        frame: FrameType | None = sys._getframe(depth + 1)
    except ValueError:
        return None
    return app_site_from(frame)


def app_site_from(frame: FrameType | None) -> SiteRef | None:
    """`app_site` from a given frame up."""
    while frame is not None:
        code = frame.f_code
        entry = verdicts.get(id(code))
        if entry is None or entry[0] is not code:
            entry = _verdict(frame)
        verdict = entry[1]
        if verdict in (APP, PACKAGE):
            return (entry[2], code, frame.f_lasti)
        if verdict == LIBRARY or _client_codes.get(id(code)) is code:
            return None  # the standard library's machinery, or an intercepted client's own code
        frame = frame.f_back
    return None


def caller_site_from(frame: FrameType | None) -> SiteRef | str:
    """The site of the code whose caller frame is `frame`, skipping plumbing; a library counts as a caller."""
    found = skip_plumbing(frame)
    if found is None:
        return "?:?:0"
    return (verdicts[id(found.f_code)][2], found.f_code, found.f_lasti)


# Who made a read, as a bundle's env events name it (no mark: the app's own code).
READ_BY = {PACKAGE: "package", LIBRARY: "library"}


def read_by(frame: FrameType | None) -> tuple[FrameType | None, str | None]:
    """The frame that made the read whose caller frame is `frame`, and who it is: None for the app's own
    code, "package" or "library" (`READ_BY`). Unlike `skip_plumbing`, an intercepted HTTP client's own code is
    the reader, not plumbing to skip: httpx reading SSL_CERT_FILE while it builds its SSL context is httpx's
    read, not a read by the app line that created the client."""
    while frame is not None:
        code = frame.f_code
        entry = verdicts.get(id(code))
        if entry is None or entry[0] is not code:
            entry = _verdict(frame)
        if entry[1] != PLUMBING:
            return frame, READ_BY.get(entry[1])
        if _client_codes.get(id(code)) is code:
            return frame, READ_BY[PACKAGE]
        frame = frame.f_back
    return None, READ_BY[LIBRARY]


def read_site(frame: FrameType | None) -> tuple[SiteRef | str, str | None]:
    """`read_by` with the reading frame's site (`site_ref`) in its place, in the same pass: a recorded env read."""
    while frame is not None:
        code = frame.f_code
        entry = verdicts.get(id(code))
        if entry is None or entry[0] is not code:
            entry = _verdict(frame)
        if entry[1] != PLUMBING:
            return (entry[2], code, frame.f_lasti), READ_BY.get(entry[1])
        if _client_codes.get(id(code)) is code:
            return (entry[2], code, frame.f_lasti), READ_BY[PACKAGE]
        frame = frame.f_back
    return "?:?:0", READ_BY[LIBRARY]


def caller_site(depth: int) -> SiteRef | str:
    """`site_ref(caller_frame(depth))` in one pass: a library counts as a caller here."""
    try:
        frame: FrameType | None = sys._getframe(depth + 1)
    except ValueError:
        return "?:?:0"
    while frame is not None:
        code = frame.f_code
        entry = verdicts.get(id(code))
        if entry is None or entry[0] is not code:
            entry = _verdict(frame)
        if entry[1] != PLUMBING:
            return (entry[2], code, frame.f_lasti)
        frame = frame.f_back
    return "?:?:0"


def skip_plumbing(frame: FrameType | None) -> FrameType | None:
    """The first frame from `frame` up that is not a patched API's own wrapper (os.getenv, Mapping.get)."""
    while frame is not None:
        code = frame.f_code
        entry = verdicts.get(id(code))
        if entry is None or entry[0] is not code:
            entry = _verdict(frame)
        if entry[1] != PLUMBING:
            return frame
        frame = frame.f_back
    return None


def site_ref(frame: FrameType) -> SiteRef:
    """What `site_of` needs, taken cheaply on the hot path; formatted only if the execution is kept.

    The frame's instruction offset, not its line: `f_lineno` scans the code's line table (long in a
    long function), so the line is looked up from the offset when the site is formatted."""
    return (frame.f_globals.get("__name__", "?"), frame.f_code, frame.f_lasti)


def line_at(code: CodeType, offset: int) -> int | None:
    """The line of the instruction at byte `offset`, as `frame.f_lineno` would have said."""
    for start, end, line in code.co_lines():
        if start <= offset < end:
            return line
    return None


def format_site(site: str | SiteRef) -> str:
    if isinstance(site, str):
        return site
    module, code, offset = site
    return f"{module}:{code.co_qualname}:{line_at(code, offset)}"


def site_of(frame: FrameType | None) -> str:
    """`module:qualname:line`: the stream key of a call (module and function) plus its line for people."""
    if frame is None:
        return "?:?:0"
    code = frame.f_code
    return f"{frame.f_globals.get('__name__', '?')}:{code.co_qualname}:{frame.f_lineno}"
