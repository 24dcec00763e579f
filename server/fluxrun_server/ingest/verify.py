"""Bundle checks at the edge (format version, Ed25519 signature, the signed project), on a few threads
beside the event loop.

`verify_signature` checks with libsodium (through PyNaCl) and lets OpenSSL decide only what
libsodium refuses (see fluxrun.bundle.seal). libsodium releases the GIL while it verifies, so checking on
threads runs in parallel with the event loop and the WAL writer: only the parse holds
the GIL. Until libsodium, `cryptography` (about twice as slow, holding the GIL) was the check, and batches went to a
pool of worker processes; the pickling, the pool's manager and feeder threads and the worker's own parse
cost more CPU per bundle than the verification that threads now run. `Verifier` splits a batch across
`workers` threads (one chunk each) and checks a single bundle inline, where the hand-off would cost more
than it saves.

The checks are the same either way: `check_bundles` is a pure function of the bytes, the project's
registered public keys and the project's full name. A bundle is accepted only into the project its signed
header names (format v2): a registered *public* key is not a secret, so the signature alone cannot say
which project a bundle belongs to. Each accepted bundle's SHA-256 comes back with its verdict (computed
here, off the event loop), so ingest can tell an identical retry from a different bundle with the same id.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fluxrun.bundle import SealedBundle, read_bundle, verify_signature
from fluxrun.errors import BundleError
from fluxrun_server.ingest.summary_limits import check_summary

__all__ = [
    "BUNDLE_ID",
    "SUPPORTED_VERSIONS",
    "Checked",
    "Verifier",
    "check_bundles",
    "check_fields",
    "check_project",
    "default_workers",
]

# Version 1 names no project, so no server can tell which project it was sealed for: refused at ingest
# (readers still open it). See docs/bundle-format.md, "Versioning".
SUPPORTED_VERSIONS = (2,)
INLINE_BELOW = 2  # batches with fewer bundles are checked in the event loop (no hand-off to a thread)
CHUNK_MIN = 4  # a batch is split into chunks of at least this many bundles (one per thread)
# What a bundle id may be: the SDK's are uuid4 hex. Ids become object-store keys, URLs, file names and
# arguments of the shell commands the dashboard shows, so nothing else gets in.
BUNDLE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True, slots=True)
class Checked:
    """One bundle's verdict: `reason` is None when it is accepted; `bundle_id` is None if unreadable."""

    bundle_id: str | None
    reason: str | None = None
    message: str | None = None
    sha256: bytes | None = None  # of the whole sealed bundle, for accepted ones


def check_bundles(bundles: Sequence[bytes], signers: Mapping[str, bytes], project: str) -> list[Checked]:
    """Parse and verify each bundle against the project's public keys (raw 32-byte Ed25519 keys by key id)
    and its full name (`WORKSPACE/PROJECT`), which the bundle's signed header must name."""
    return _check(bundles, {key_id: _public_key(raw) for key_id, raw in signers.items()}, project)


def _check(bundles: Sequence[bytes], keys: Mapping[str, Ed25519PublicKey], project: str) -> list[Checked]:
    out: list[Checked] = []
    for raw in bundles:
        sealed = None
        try:
            sealed = read_bundle(raw)
            if sealed.version not in SUPPORTED_VERSIONS:
                raise BundleError(
                    "wrong_project",
                    f"bundle {sealed.bundle_id[:64]!r} is format version {sealed.version}, which does not name its "
                    "project; this server accepts only bundles that do (version 2): upgrade the fluxrun SDK",
                )
            if not keys:
                raise BundleError(
                    "unknown_key_id",
                    f"project has no registered signing keys; register {sealed.signing_key_id} with "
                    "`fluxrun server admin add-key` (the key comes from `fluxrun keys public capture.key`)",
                )
            verify_signature(sealed, keys)
            check_project(sealed, project)
            check_fields(sealed)
            check_summary(sealed)  # values the index could not store are refused before the ack
        except BundleError as exc:
            out.append(Checked(sealed.bundle_id if sealed is not None else None, exc.reason, str(exc)))
            continue
        out.append(Checked(sealed.bundle_id, sha256=hashlib.sha256(raw).digest()))
    return out


def check_project(sealed: SealedBundle, project: str) -> None:
    """The signed project must be the token's project. Checked after the signature, so the name is the signer's."""
    named = sealed.project
    if named == project:
        return
    if not named:
        raise BundleError(
            "wrong_project",
            f"bundle {sealed.bundle_id[:64]!r} was sealed without a project (the app had no FLUXRUN_DSN, so it wrote "
            f"bundles to a folder); set FLUXRUN_DSN=https://TOKEN@host/{project} before bundles are sealed",
        )
    raise BundleError(
        "wrong_project",
        f"bundle {sealed.bundle_id[:64]!r} was sealed for project {named[:200]!r}, but this ingest token belongs to "
        f"{project!r}; ship it with that project's token (the DSN's path names the project: "
        f"https://TOKEN@host/{project})",
    )


def check_fields(sealed: SealedBundle) -> None:
    """Refuse the bundle text that is later shown, copied into commands and written into generated tests
    unless it has the expected shape. A valid signature is not enough: any member can register a key."""
    if not BUNDLE_ID.fullmatch(sealed.bundle_id):
        raise BundleError(
            "malformed",
            f"bundle id {sealed.bundle_id[:80]!r} is not 1 to 64 characters of A-Za-z0-9_- (the SDK uses a uuid4 hex)",
        )
    summary = sealed.summary
    error = summary.get("error")
    if error is not None and not isinstance(error, dict):
        raise BundleError("malformed", f"bundle {sealed.bundle_id}: summary field 'error' is not an object or null")
    fields = {"route": summary.get("route"), "method": summary.get("method")}
    if error:
        fields.update({"error type": error.get("type"), "error message": error.get("message")})
    for name, value in fields.items():
        if value is not None and not isinstance(value, str):
            raise BundleError(
                "malformed",
                f"bundle {sealed.bundle_id}: summary field {name} is a {type(value).__name__}, not a string or null",
            )


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

    async def check(
        self, bundles: Sequence[bytes], signers: Mapping[str, Ed25519PublicKey], project: str
    ) -> list[Checked]:
        pool = self._ready_pool() if len(bundles) >= self.inline_below else None
        if pool is None:
            return _check(bundles, signers, project)
        loop = asyncio.get_running_loop()
        chunks = max(1, min(self.workers, len(bundles) // CHUNK_MIN))
        size = -(-len(bundles) // chunks)
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(pool, _check, bundles[start : start + size], signers, project)
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
