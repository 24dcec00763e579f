"""Regenerate the committed bundle-format test vectors (v1 and v2), deterministically.

    python tests/vectors/make_vectors.py          # rewrite the files in tests/vectors/
    python tests/vectors/make_vectors.py --check  # exit 1 if the committed files differ

Everything random comes from fixed seeds: the two long-term keys are derived from fixed strings, and
the Sealer's private `_rng` hook gets a SHA-256 counter stream. The Sealer draws from it in this order:
ephemeral X25519 private key (32 bytes, at construction), then per bundle the data key (32), the
wrapped-key nonce (12) and the payload nonce (12). Ed25519 signatures are deterministic.

Never regenerate these to make a failing test pass: a change in the sealed bytes means the format
changed, which needs a new format version (docs/bundle-format.md) and a new vector next to this one.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fluxrun.bundle import CaptureKey, ReplayKey, Sealer
from fluxrun.bundle.keys import _capture_document, _dump_document, _keys_from_private, _replay_document

HERE = Path(__file__).resolve().parent
BUNDLE_FILE = "bundle-v1.fluxrun"
BUNDLE_FILE_V2 = "bundle-v2.fluxrun"

BUNDLE_ID = "bnd_vector_v1_0001"
BUNDLE_ID_V2 = "bnd_vector_v2_0001"
PROJECT_V2 = "acme/shop"
CREATED_AT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
SDK = "fluxrun-python/test-vectors"

SUMMARY: dict[str, Any] = {
    "route": "POST /checkout",
    "status": 500,
    "error": {"type": "PaymentDeclined", "message": "card declined"},
    "headers": {"authorization": "[Filtered]"},
    "duration_ms": 41.5,
}

PAYLOAD: dict[str, Any] = {
    "request": {
        "method": "POST",
        "path": "/checkout",
        "query": {"coupon": "WINTER"},
        "headers": {"content-type": "application/json", "authorization": "Bearer sk_live_vector"},
        "body": '{"cart": [1, 2, 3]}',
    },
    "events": [
        {"seq": 0, "channel": "clock", "call": "time.time", "result": 1767323045.678901},
        {
            "seq": 1,
            "channel": "random",
            "call": "uuid.uuid4",
            "result": "0f8fad5b-d9cb-469f-a165-70867728950e",
        },
        {
            "seq": 2,
            "channel": "http",
            "call": {"method": "POST", "url": "https://pay.example.com/v1/charges", "body": None},
            "result": {"status": 402, "body": {"error": "card_declined", "unicode": "žluťoučký kůň 🐎"}},
            "elapsed": 0.0123,
        },
        {"seq": 3, "channel": "env", "call": "PAYMENT_REGION", "result": None},
    ],
    "outcome": {"error": "PaymentDeclined", "traceback": ["app.py:42 in checkout", "pay.py:7 in charge"]},
    "numbers": [0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 0.1, -2.5e-300, True, False],
}


def seeded_rng(seed: bytes) -> Callable[[int], bytes]:
    """A deterministic stand-in for os.urandom: SHA-256(seed || counter) blocks."""
    counter = 0

    def rng(size: int) -> bytes:
        nonlocal counter
        out = b""
        while len(out) < size:
            out += hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
            counter += 1
        return out[:size]

    return rng


def vector_keys() -> tuple[CaptureKey, ReplayKey]:
    signing = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"fluxrun vector v1 signing key").digest())
    recipient = X25519PrivateKey.from_private_bytes(hashlib.sha256(b"fluxrun vector v1 recipient key").digest())
    return _keys_from_private(signing, recipient)


def build() -> dict[str, bytes]:
    """Every committed vector file, by name."""
    capture, replay = vector_keys()
    sealer = Sealer(capture, sdk=SDK, _rng=seeded_rng(b"fluxrun vector v1 rng"), _clock=lambda: 0.0, _version=1)
    bundle = sealer.seal(summary=SUMMARY, payload=PAYLOAD, bundle_id=BUNDLE_ID, created_at=CREATED_AT)
    sealer_v2 = Sealer(
        capture, sdk=SDK, project=PROJECT_V2, _rng=seeded_rng(b"fluxrun vector v2 rng"), _clock=lambda: 0.0
    )
    bundle_v2 = sealer_v2.seal(summary=SUMMARY, payload=PAYLOAD, bundle_id=BUNDLE_ID_V2, created_at=CREATED_AT)
    pretty = orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE
    return {
        "capture.key": _dump_document(_capture_document(capture)),
        "replay.key": _dump_document(_replay_document(replay)),
        BUNDLE_FILE: bundle,
        BUNDLE_FILE_V2: bundle_v2,
        "summary.json": orjson.dumps(SUMMARY, option=pretty),
        "payload.json": orjson.dumps(PAYLOAD, option=pretty),
    }


def main(argv: list[str]) -> int:
    files = build()
    if "--check" in argv:
        stale = [name for name, data in files.items() if (HERE / name).read_bytes() != data]
        for name in stale:
            print(f"differs: {HERE / name}", file=sys.stderr)
        return 1 if stale else 0
    for name, data in files.items():
        (HERE / name).write_bytes(data)
        print(f"wrote {HERE / name} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
