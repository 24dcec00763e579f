"""Sealing and opening good bundles: round trips, what the header says, key reuse, threads."""

from __future__ import annotations

import base64
import os
import random
import struct
import threading
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fluxrun.bundle import (
    CaptureKey,
    ReplayKey,
    Sealer,
    generate_keys,
    load_capture_key,
    load_replay_key,
    open_bundle,
    read_bundle,
    verify_signature,
)
from fluxrun.bundle import seal as seal_module


@pytest.fixture(scope="module")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[CaptureKey, ReplayKey]:
    capture_path, replay_path = generate_keys(tmp_path_factory.mktemp("keys"))
    return load_capture_key(capture_path), load_replay_key(replay_path)


def _payload_of_size(size: int) -> dict[str, Any]:
    """A JSON event log of roughly `size` bytes, mixing compressible and random-looking text."""
    rng = random.Random(size)
    events: list[dict[str, Any]] = []
    while len(orjson.dumps({"events": events})) < size:
        events.append(
            {
                "seq": len(events),
                "channel": rng.choice(["http", "clock", "env", "host"]),
                "call": {"method": "GET", "url": f"https://api.example.com/items/{rng.randint(0, 10**9)}"},
                "result": {"status": 200, "body": rng.randbytes(rng.randint(8, 64)).hex()},
                "elapsed": rng.random(),
            }
        )
    return {"request": {"method": "POST", "path": "/checkout"}, "events": events}


SUMMARY = {"route": "/checkout", "status": 500, "error": "ValueError: boom", "unicode": "žluťoučký 🐎"}


@pytest.mark.parametrize("size", [0, 16 * 1024, 1024 * 1024], ids=["small", "16KiB", "1MiB"])
def test_round_trip(key_pair: tuple[CaptureKey, ReplayKey], size: int) -> None:
    capture, replay = key_pair
    payload = _payload_of_size(size) if size else {"ok": True}
    data = Sealer(capture, sdk="fluxrun-python/test").seal(summary=SUMMARY, payload=payload, bundle_id=f"bnd_{size}")
    opened = open_bundle(data, replay)
    assert opened.payload == payload
    assert opened.summary == SUMMARY
    assert opened.sealed.bundle_id == f"bnd_{size}"
    assert opened.sealed.plain_size == len(orjson.dumps(payload))


def test_read_without_key_exposes_header_and_summary_only(key_pair: tuple[CaptureKey, ReplayKey]) -> None:
    capture, replay = key_pair
    payload = {"secret": "card 4242 4242 4242 4242"}
    data = Sealer(capture, sdk="fluxrun-python/9.9", project="acme/shop").seal(
        summary=SUMMARY,
        payload=payload,
        bundle_id="bnd_1",
        created_at=datetime(2026, 3, 4, 5, 6, 7, 890, tzinfo=timezone(timedelta(hours=2))),
    )
    assert b"4242" not in data

    sealed = read_bundle(data)
    assert sealed.version == 2
    assert sealed.project == "acme/shop"
    assert sealed.summary == SUMMARY
    assert sealed.bundle_id == "bnd_1"
    assert sealed.signing_key_id == capture.signing_key_id
    assert sealed.recipient_key_id == capture.recipient_key_id
    header = sealed.header
    assert header["created_at"] == "2026-03-04T03:06:07.000890Z"
    assert header["sdk"] == "fluxrun-python/9.9"
    assert header["compression"] == "zstd"
    assert header["cipher"] == "X25519-HKDF-SHA256-AES-256-GCM"
    assert header["plain_size"] == len(orjson.dumps(payload))
    assert len(base64.b64decode(header["ephemeral_public"])) == 32
    assert len(base64.b64decode(header["wrapped_key"])) == 48
    assert len(base64.b64decode(header["wrapped_key_nonce"])) == 12
    assert len(base64.b64decode(header["payload_nonce"])) == 12
    verify_signature(sealed, replay.signers)


def test_layout_matches_the_documented_format(key_pair: tuple[CaptureKey, ReplayKey]) -> None:
    capture, _ = key_pair
    data = Sealer(capture, sdk="t").seal(summary={"a": 1}, payload={"b": 2}, bundle_id="x")
    assert data[:5] == b"FLXR\x02"
    position = 5
    sections = []
    for _ in range(3):
        (length,) = struct.unpack(">I", data[position : position + 4])
        sections.append(data[position + 4 : position + 4 + length])
        position += 4 + length
    assert len(data) == position + 64
    header, summary, _ciphertext = sections
    assert orjson.loads(header)["bundle_id"] == "x"
    assert orjson.loads(header)["project"] == ""  # sealed without a DSN: names no project
    assert summary == b'{"a":1}'
    sealed = read_bundle(data)
    assert sealed.signed == data[:-64]
    assert sealed.signature == data[-64:]


def test_created_at_defaults_to_now_and_must_be_aware(key_pair: tuple[CaptureKey, ReplayKey]) -> None:
    capture, _ = key_pair
    sealer = Sealer(capture, sdk="t")
    before = datetime.now(UTC)
    sealed = read_bundle(sealer.seal(summary={}, payload={}, bundle_id="x"))
    stamp = datetime.fromisoformat(sealed.created_at)
    assert sealed.created_at.endswith("Z")
    assert before - timedelta(seconds=1) <= stamp <= datetime.now(UTC)
    with pytest.raises(ValueError, match="timezone-aware"):
        sealer.seal(summary={}, payload={}, bundle_id="x", created_at=datetime(2026, 1, 1))


def test_rejects_bad_input(key_pair: tuple[CaptureKey, ReplayKey]) -> None:
    capture, _ = key_pair
    sealer = Sealer(capture, sdk="t")
    with pytest.raises(ValueError, match="bundle_id"):
        sealer.seal(summary={}, payload={}, bundle_id="")
    with pytest.raises(TypeError):
        sealer.seal(summary={}, payload={"x": object()}, bundle_id="x")
    with pytest.raises(TypeError):
        sealer.seal(summary={"x": {1, 2}}, payload={}, bundle_id="x")


def test_fresh_data_key_per_bundle_and_shared_ephemeral(key_pair: tuple[CaptureKey, ReplayKey]) -> None:
    capture, _ = key_pair
    sealer = Sealer(capture, sdk="t")
    first = read_bundle(sealer.seal(summary={}, payload={"same": 1}, bundle_id="x"))
    second = read_bundle(sealer.seal(summary={}, payload={"same": 1}, bundle_id="x"))
    assert first.header["ephemeral_public"] == second.header["ephemeral_public"]
    assert first.header["wrapped_key"] != second.header["wrapped_key"]
    assert first.ciphertext != second.ciphertext
    other = read_bundle(Sealer(capture, sdk="t").seal(summary={}, payload={}, bundle_id="x"))
    assert other.header["ephemeral_public"] != first.header["ephemeral_public"]


def test_ephemeral_key_rotates_by_age(key_pair: tuple[CaptureKey, ReplayKey]) -> None:
    capture, replay = key_pair
    now = [1000.0]
    sealer = Sealer(capture, sdk="t", _clock=lambda: now[0])

    def ephemeral() -> tuple[str, bytes]:
        data = sealer.seal(summary={}, payload={"n": now[0]}, bundle_id="x")
        assert open_bundle(data, replay).payload == {"n": now[0]}
        return read_bundle(data).header["ephemeral_public"], data

    first, _ = ephemeral()
    now[0] += 599.0
    assert ephemeral()[0] == first
    now[0] += 1.0
    second, _ = ephemeral()
    assert second != first
    assert ephemeral()[0] == second


def test_ephemeral_key_rotates_by_count(
    key_pair: tuple[CaptureKey, ReplayKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    capture, replay = key_pair
    monkeypatch.setattr(seal_module, "EPHEMERAL_MAX_BUNDLES", 3)
    sealer = Sealer(capture, sdk="t")
    bundles = [sealer.seal(summary={}, payload={"i": i}, bundle_id=f"b{i}") for i in range(7)]
    ephemerals = [read_bundle(data).header["ephemeral_public"] for data in bundles]
    assert len(set(ephemerals[0:3])) == 1
    assert len(set(ephemerals[3:6])) == 1
    assert len(set(ephemerals)) == 3
    assert [open_bundle(data, replay).payload["i"] for data in bundles] == list(range(7))


def test_sealer_is_thread_safe(key_pair: tuple[CaptureKey, ReplayKey], monkeypatch: pytest.MonkeyPatch) -> None:
    capture, replay = key_pair
    monkeypatch.setattr(seal_module, "EPHEMERAL_MAX_BUNDLES", 17)  # rotate while threads race
    sealer = Sealer(capture, sdk="t")
    results: dict[int, list[bytes]] = {}
    barrier = threading.Barrier(4)

    def work(worker: int) -> None:
        barrier.wait()
        results[worker] = [
            sealer.seal(
                summary={"w": worker},
                payload={"w": worker, "i": i, "blob": os.urandom(512).hex()},
                bundle_id=f"{worker}-{i}",
            )
            for i in range(150)
        ]

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for worker, bundles in results.items():
        for i, data in enumerate(bundles):
            opened = open_bundle(data, replay)
            assert (opened.payload["w"], opened.payload["i"]) == (worker, i)
            assert opened.sealed.bundle_id == f"{worker}-{i}"


# --- hypothesis: any JSON object survives the trip -----------------------------------------------------

_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=20)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text
)
_values = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(_text, children, max_size=5),
    max_leaves=30,
)
_objects = st.dictionaries(_text, _values, max_size=6)


@pytest.fixture(scope="module")
def module_sealer(key_pair: tuple[CaptureKey, ReplayKey]) -> Sealer:
    return Sealer(key_pair[0], sdk="t")


@settings(max_examples=50)
@given(payload=_objects, summary=_objects, bundle_id=_text.filter(bool))
def test_round_trip_any_json(
    key_pair: tuple[CaptureKey, ReplayKey],
    module_sealer: Sealer,
    payload: dict[str, Any],
    summary: dict[str, Any],
    bundle_id: str,
) -> None:
    data = module_sealer.seal(summary=summary, payload=payload, bundle_id=bundle_id)
    opened = open_bundle(data, key_pair[1])
    assert opened.payload == payload
    assert opened.summary == summary
    assert opened.sealed.bundle_id == bundle_id


def test_seal_only_needs_the_capture_key(tmp_path: Path) -> None:
    """The app side never touches the replay key: sealing works with capture.key alone."""
    capture_path, replay_path = generate_keys(tmp_path)
    capture = load_capture_key(capture_path)
    replay_path.unlink()
    data = Sealer(capture, sdk="t").seal(summary={}, payload={"x": 1}, bundle_id="x")
    assert read_bundle(data).recipient_key_id == capture.recipient_key_id
