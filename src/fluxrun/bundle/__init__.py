"""Bundles: the sealed unit a capture becomes (keys, payload codec, seal/read/verify/open).

The format is specified byte by byte in docs/bundle-format.md.
"""

from fluxrun.bundle.keys import (
    CaptureKey,
    ReplayKey,
    generate_keys,
    load_capture_key,
    load_replay_key,
    load_replay_keys,
    parse_public_signing_key,
    signing_public_key,
)
from fluxrun.bundle.seal import (
    OpenedBundle,
    SealedBundle,
    Sealer,
    open_bundle,
    read_bundle,
    verify_signature,
)

__all__ = [
    "CaptureKey",
    "OpenedBundle",
    "ReplayKey",
    "SealedBundle",
    "Sealer",
    "generate_keys",
    "load_capture_key",
    "load_replay_key",
    "load_replay_keys",
    "open_bundle",
    "parse_public_signing_key",
    "read_bundle",
    "signing_public_key",
    "verify_signature",
]
