"""Bundle checks at the edge (format version, Ed25519 signature), on a few threads beside the event loop.

`verify_signature` checks with libsodium (through PyNaCl, ~55 µs here) and lets OpenSSL decide only what
libsodium refuses (see fluxrun.bundle.seal). libsodium releases the GIL while it verifies, so checking on
threads runs in parallel with the event loop and the WAL writer: only the parse (~15 µs a bundle) holds
the GIL. Until libsodium, `cryptography` (~105 µs, holding the GIL) was the check, and batches went to a
pool of worker processes; the pickling, the pool's manager and feeder threads and the worker's own parse
cost more CPU per bundle than the verification that threads now run. `Verifier` splits a batch across
`workers` threads (one chunk each) and checks a single bundle inline, where the hand-off would cost more
than it saves.

The checks are the same either way: `check_bundles` is a pure function of the bytes and the project's
registered public keys.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fluxrun.bundle import read_bundle, verify_signature
from fluxrun.errors import BundleError

__all__ = ["SUPPORTED_VERSIONS", "Checked", "Verifier", "check_bundles", "default_workers"]

SUPPORTED_VERSIONS = (1,)
INLINE_BELOW = 2  # batches with fewer bundles are checked in the event loop (no hand-off to a thread)
CHUNK_MIN = 4  # a batch is split into chunks of at least this many bundles (one per thread)


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
    """One thread per core: their verifications run without the GIL, beside the event loop."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores))


class Verifier:
    """Checks batches on a small thread pool, single bundles inline; see the module doc."""

    def __init__(self, workers: int | None = None, *, inline_below: int = INLINE_BELOW) -> None:
        self.workers = default_workers() if workers is None else workers
        self.inline_below = inline_below
        self._pool: ThreadPoolExecutor | None = None
        self._closed = False
        self._lock = threading.Lock()

    async def check(self, bundles: Sequence[bytes], signers: Mapping[str, Ed25519PublicKey]) -> list[Checked]:
        pool = self._ready_pool() if len(bundles) >= self.inline_below else None
        if pool is None:
            return _check(bundles, signers)
        loop = asyncio.get_running_loop()
        chunks = max(1, min(self.workers, len(bundles) // CHUNK_MIN))
        size = -(-len(bundles) // chunks)
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(pool, _check, bundles[start : start + size], signers)
                for start in range(0, len(bundles), size)
            )
        )
        return [verdict for part in parts for verdict in part]

    def start(self) -> None:
        """Create the threads' pool now (the server calls this at start-up); threads start on first use."""
        self._ready_pool()

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """True if batches are checked on threads; False if there are none (inline only)."""
        return self._ready_pool() is not None

    def _ready_pool(self) -> ThreadPoolExecutor | None:
        if self.workers <= 0 or self._closed:
            return None
        if self._pool is None:
            with self._lock:
                if self._pool is None and not self._closed:
                    self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="fluxrun-verify")
        return self._pool

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
