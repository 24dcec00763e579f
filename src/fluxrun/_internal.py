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
        real = _real(filename)
        return not real.startswith(LIBRARY_ROOTS) and not is_fluxrun_file(real)

    def frame(self, frame: FrameType) -> bool:
        return self.module(frame.f_globals.get("__name__", ""), frame.f_code.co_filename)


# Frames inside these files are the public entry points of the patched APIs themselves
# (os.getenv -> Mapping.get -> _Environ.__getitem__), so the caller is looked for above them.
_PLUMBING_MODULES = ("os", "collections.abc", "_collections_abc", "random", "uuid", "secrets", "contextlib")
_PLUMBING_PACKAGES = ("wrapt", "httpx", "httpx2", "httpcore", "httpcore2")
# Caches keyed by id(code): hashing a code object hashes its whole body on every call (~0.5 µs).
# Each entry keeps the code object itself, so an id reused after garbage collection cannot match.
_plumbing_cache: dict[int, tuple[CodeType, bool]] = {}
_library_code_cache: dict[int, tuple[CodeType, bool]] = {}


def _is_plumbing(frame: FrameType) -> bool:
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
    while frame is not None and _is_plumbing(frame):
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
        _verdicts.clear()


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

# Per code object, in one dict lookup (the hot path of every recorded call): (code, verdict, module).
_PLUMBING, _LIBRARY, _APP = 0, 1, 2
_verdicts: dict[int, tuple[CodeType, int, str]] = {}


def _verdict(frame: FrameType) -> tuple[CodeType, int, str]:
    code = frame.f_code
    if _is_plumbing(frame):
        verdict = _PLUMBING
    else:
        verdict = _LIBRARY if frame_is_library(frame) else _APP
    entry = (code, verdict, frame.f_globals.get("__name__", "?"))
    _verdicts[id(code)] = entry
    return entry


def app_site(depth: int) -> SiteRef | None:
    """The caller's site (`site_ref`), skipping plumbing frames, or None for library internals."""
    try:
        frame: FrameType | None = sys._getframe(depth + 1)
    except ValueError:
        return None
    return app_site_from(frame)


def app_site_from(frame: FrameType | None) -> SiteRef | None:
    """`app_site` from a given frame up."""
    while frame is not None:
        code = frame.f_code
        entry = _verdicts.get(id(code))
        if entry is None or entry[0] is not code:
            entry = _verdict(frame)
        verdict = entry[1]
        if verdict == _APP:
            return (entry[2], code, frame.f_lasti)
        if verdict == _LIBRARY:
            return None
        frame = frame.f_back
    return None


def caller_site(depth: int) -> SiteRef | str:
    """`site_ref(caller_frame(depth))` in one pass: a library counts as a caller here."""
    try:
        frame: FrameType | None = sys._getframe(depth + 1)
    except ValueError:
        return "?:?:0"
    while frame is not None:
        code = frame.f_code
        entry = _verdicts.get(id(code))
        if entry is None or entry[0] is not code:
            entry = _verdict(frame)
        if entry[1] != _PLUMBING:
            return (entry[2], code, frame.f_lasti)
        frame = frame.f_back
    return "?:?:0"


def site_ref(frame: FrameType) -> SiteRef:
    """What `site_of` needs, taken cheaply on the hot path; formatted only if the execution is kept.

    The frame's instruction offset, not its line: `f_lineno` scans the code's line table (about 2 µs
    in a 300-line function), so the line is looked up from the offset when the site is formatted."""
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
