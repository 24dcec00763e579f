"""Find what a `module:qualname` path in a bundle names, without running what it names.

A bundle is data written by whoever holds a capture key, so the paths in it are untrusted. The rule:
- a module already imported in this process is used as it is (importing it again runs nothing);
- a module not imported yet is imported only when it is the app's own code: its top-level package lives
  outside the standard library, site-packages and FluxRun (found by name, without importing anything);
- the rest of the path is walked through the module's and classes' own namespaces (`__dict__`), so no
  module `__getattr__`, property or descriptor runs while looking.
Anything else raises `Refused`, saying why. Callers check what they got (a class of the expected kind, a
marked entry point) before they call anything.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Any

from fluxrun._internal import is_fluxrun_file, is_library_file

__all__ = ["Refused", "is_app_module", "lookup", "module_for", "mro", "namespace", "split"]

_NEVER_APP = ("fluxrun", "pytest_fluxrun", "_pytest", "pytest", "pluggy")
_MRO: Any = type.__dict__["__mro__"]
_DICT: Any = type.__dict__["__dict__"]
_MODULE_DICT: Any = vars(ModuleType)["__dict__"]


class Refused(Exception):
    """A path names something a bundle may not make this process load or use; the message says why."""


def split(path: object) -> tuple[str, str]:
    if not isinstance(path, str):
        raise Refused(f"{path!r} is not a module:name path")
    module, _, qualname = path.partition(":")
    if not module or not qualname or not all(p.isidentifier() for p in (*module.split("."), *qualname.split("."))):
        raise Refused(f"{path!r} is not a module:name path")
    return module, qualname


def _locations(top: str) -> list[str]:
    module = sys.modules.get(top)
    if module is not None:
        paths = list(getattr(module, "__path__", None) or [])
        return [str(p) for p in paths] or [str(getattr(module, "__file__", None) or "")]
    try:
        spec = importlib.util.find_spec(top)  # a top-level name: locates the file, imports nothing
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:
        return [str(p) for p in spec.submodule_search_locations]
    return [str(spec.origin or "")]


def is_app_module(name: str) -> bool:
    """True when `name` belongs to a top-level package whose files are the app's own (not the standard
    library, an installed package or FluxRun). Decided from file locations; nothing is imported."""
    top = name.partition(".")[0]
    if not top or top in _NEVER_APP or top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return False
    locations = _locations(top)
    return bool(locations) and all(
        loc and not loc.startswith("<") and loc not in ("built-in", "frozen")
        and not is_library_file(loc) and not is_fluxrun_file(loc)
        for loc in locations
    )  # fmt: skip


def module_for(name: str) -> ModuleType:
    """The module, if already imported or the app's own (then imported now); else `Refused`."""
    module = sys.modules.get(name)
    if isinstance(module, ModuleType):
        return module
    if module is not None:
        raise Refused(f"sys.modules[{name!r}] is not a module")
    if not is_app_module(name):
        raise Refused(f"module {name} is not imported and is not the app's own code, so it is not loaded")
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise Refused(f"cannot import the app's module {name}: {type(exc).__name__}: {exc}") from None


def mro(cls: type) -> tuple[type, ...]:
    """A class's method resolution order, read without any metaclass code."""
    return _MRO.__get__(cls)  # type: ignore[no-any-return]


def namespace(cls: type) -> Any:
    """A class's own namespace (`cls.__dict__`), read without any metaclass code."""
    return _DICT.__get__(cls)


def _member(owner: Any, name: str) -> Any:
    if isinstance(owner, ModuleType):
        own = _MODULE_DICT.__get__(owner)
        if name in own:
            return own[name]
    elif isinstance(owner, type):
        for klass in mro(owner):
            own = namespace(klass)
            if name in own:
                return own[name]
    else:
        raise Refused(f"{name!r} is looked up on something that is neither a module nor a class")
    raise Refused(f"{getattr(owner, '__name__', '?')} has no attribute {name!r}")


def lookup(path: object) -> Any:
    """What `module:qualname` names, as stored in the module's and classes' namespaces (descriptors unbound)."""
    module_name, qualname = split(path)
    obj: Any = module_for(module_name)
    for part in qualname.split("."):
        obj = _member(obj, part)
    return obj
