"""Whether this process is replaying, so capture's warnings stay silent.

A replay imports the app, and the app's own `fluxrun.init()` runs with it. Its capture warnings ("no
capture key", "HTTP clients not intercepted") speak of a capture that is not happening: replay needs no
capture key and serves every call from the recording. The replay command and the pytest plugin mark the
stretch in which they import and run the app; a forked, isolated replay child inherits the mark.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["replaying", "replaying_here"]

_lock = threading.Lock()
_depth = 0


def replaying_here() -> bool:
    """True while a replay in this process imports or runs the app."""
    return _depth > 0


@contextmanager
def replaying() -> Iterator[None]:
    """Mark the stretch in which a replay imports and runs the app (nests; safe across threads)."""
    global _depth
    with _lock:
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
