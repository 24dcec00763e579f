"""Bundle checks at the edge (format version, Ed25519 signature), off the event loop's core.

An Ed25519 verification costs ~85 µs of CPU here and `cryptography` holds the GIL while it runs, so checking
5,000 bundles/s in the server process would take half of its one Python core away from HTTP, the WAL and
the aggregator. `Verifier` sends batches of several bundles to a small pool of worker processes instead
(the bytes are pickled once, ~µs per 4 KiB bundle) and checks single bundles inline, where the round trip
would cost more than it saves. The pool starts in the background when the server starts (or at first use);
until it is ready, or if a worker dies, batches are checked inline, so a request never waits for a process.

The checks are the same either way: `check_bundles` is a pure function of the bytes and the project's
registered public keys. (`verify_signature` checks with libsodium first, ~55 µs, and lets OpenSSL decide
only what libsodium refuses; see fluxrun.bundle.seal.)
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import lru_cache

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fluxrun.bundle import read_bundle, verify_signature
from fluxrun.errors import BundleError

__all__ = ["SUPPORTED_VERSIONS", "Checked", "Verifier", "check_bundles", "default_workers"]

log = logging.getLogger("fluxrun_server.verify")

SUPPORTED_VERSIONS = (1,)
WATCHDOG_S = 1.0  # how often a worker checks that the server process still exists
INLINE_BELOW = 4  # batches with fewer bundles are checked in the event loop (no inter-process round trip)


@dataclass(frozen=True, slots=True)
class Checked:
    """One bundle's verdict: `reason` is None when it is accepted; `bundle_id` is None if unreadable."""

    bundle_id: str | None
    reason: str | None = None
    message: str | None = None


def check_bundles(bundles: Sequence[bytes], signers: Mapping[str, bytes]) -> list[Checked]:
    """Parse and verify each bundle against the project's public keys (raw 32-byte Ed25519 keys by key id)."""
    return _check(bundles, {key_id: _public_key(raw) for key_id, raw in signers.items()})


def _check(bundles: Sequence[bytes], keys: Mapping[str, Ed25519PublicKey]) -> list[Checked]:
    out: list[Checked] = []
    for raw in bundles:
        sealed = None
        try:
            sealed = read_bundle(raw)
            if sealed.version not in SUPPORTED_VERSIONS:  # read_bundle refuses unknown versions already
                raise BundleError("unsupported_version", f"format version {sealed.version} is not accepted")
            if not keys:
                raise BundleError(
                    "unknown_key_id",
                    f"project has no registered signing keys; register {sealed.signing_key_id} with "
                    "`fluxrun server admin add-key` (the key comes from `fluxrun keys public capture.key`)",
                )
            verify_signature(sealed, keys)
        except BundleError as exc:
            out.append(Checked(sealed.bundle_id if sealed is not None else None, exc.reason, str(exc)))
            continue
        out.append(Checked(sealed.bundle_id))
    return out


@lru_cache(maxsize=256)
def _public_key(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)


def raw_signers(signers: Mapping[str, Ed25519PublicKey]) -> dict[str, bytes]:
    return {key_id: key.public_bytes(Encoding.Raw, PublicFormat.Raw) for key_id, key in signers.items()}


def default_workers() -> int:
    """One worker per core beyond the first (which runs the event loop), at most 4; none on one core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cores - 1))


def _warm() -> int:
    return os.getpid()


def _exit_with(server_pid: int) -> None:
    """Worker initializer: exit when the server process is gone.

    A worker forked by the forkserver is not the server's child and holds both ends of its task queue, so it
    would never see the server die (SIGKILL, a crash) and would stay forever, keeping the forkserver too.
    """

    def watch() -> None:
        while True:
            time.sleep(WATCHDOG_S)
            try:
                os.kill(server_pid, 0)
            except ProcessLookupError:
                os._exit(0)
            except PermissionError:  # the pid now belongs to another user's process: ours is gone
                os._exit(0)

    threading.Thread(target=watch, name="fluxrun-verify-watchdog", daemon=True).start()


class Verifier:
    """Checks batches in worker processes (started lazily, in the background) or inline; see the module doc."""

    def __init__(self, workers: int | None = None, *, inline_below: int = INLINE_BELOW) -> None:
        self.workers = default_workers() if workers is None else workers
        self.inline_below = inline_below
        self._pool: ProcessPoolExecutor | None = None
        self._starting = False
        self._closed = False
        self._lock = threading.Lock()

    async def check(self, bundles: Sequence[bytes], signers: Mapping[str, Ed25519PublicKey]) -> list[Checked]:
        pool = self._ready_pool() if len(bundles) >= self.inline_below else None
        if pool is None:
            return _check(bundles, signers)
        try:
            return await asyncio.get_running_loop().run_in_executor(
                pool, check_bundles, list(bundles), raw_signers(signers)
            )
        except BrokenProcessPool:
            log.warning("a bundle verification worker died; checking inline and restarting the pool")
            self._discard(pool)
            return _check(bundles, signers)

    def start(self) -> None:
        """Start the workers in the background now (the server calls this at start-up), not at the first batch."""
        self._ready_pool()

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Start the workers if needed and wait until they answer; False if there are none (inline only)."""
        self._ready_pool()
        deadline = time.monotonic() + timeout
        while self._pool is None and self._starting and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._pool is not None

    def _ready_pool(self) -> ProcessPoolExecutor | None:
        if self.workers <= 0 or self._closed:
            return None
        if self._pool is not None:
            return self._pool
        with self._lock:
            if not self._starting:
                self._starting = True
                threading.Thread(target=self._start, name="fluxrun-verify-start", daemon=True).start()
        return None

    def _start(self) -> None:
        try:
            # forkserver: never fork this multi-threaded process itself; workers import only what they use.
            context = multiprocessing.get_context("forkserver")
            pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=context, initializer=_exit_with, initargs=(os.getpid(),)
            )
            for future in [pool.submit(_warm) for _ in range(self.workers)]:
                future.result(timeout=120)
        except Exception:
            log.exception("could not start the bundle verification workers; verifying inline")
            with self._lock:
                self._starting = False
                self.workers = 0
            return
        with self._lock:
            if self._closed:
                pool.shutdown(wait=False, cancel_futures=True)
                return
            self._pool = pool
            self._starting = False

    def _discard(self, pool: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
