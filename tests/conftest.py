"""Fixtures shared by the suite: a key pair per session and a capture into a temporary folder."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import fluxrun
from fluxrun.bundle import ReplayKey, generate_keys, load_replay_key, open_bundle

sys.path.insert(0, str(Path(__file__).parent / "support"))  # `servers`: real uvicorn processes for tests


@dataclass(frozen=True)
class Keys:
    directory: Path
    capture: Path
    replay: Path
    replay_key: ReplayKey


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    directory = tmp_path_factory.mktemp("keys")
    capture, replay = generate_keys(directory)
    return Keys(directory, capture, replay, load_replay_key(replay))


class Captured:
    """What a test captured: the bundles written to the folder sink, opened with the replay key."""

    def __init__(self, directory: Path, keys: Keys) -> None:
        self.directory = directory
        self.keys = keys

    def files(self) -> list[Path]:
        assert fluxrun.flush(5.0), "FluxRun did not finish writing bundles within 5 s"
        if not self.directory.exists():
            return []
        return sorted(self.directory.glob("*.fluxrun"), key=lambda p: p.stat().st_mtime_ns)

    def bundles(self) -> list[Any]:
        return [open_bundle(p.read_bytes(), self.keys.replay_key) for p in self.files()]

    def payloads(self) -> list[dict[str, Any]]:
        return [b.payload for b in self.bundles()]

    def one(self) -> dict[str, Any]:
        payloads = self.payloads()
        assert len(payloads) == 1, f"expected one bundle, found {len(payloads)}"
        return payloads[0]

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.one()["events"] if kind is None or e["kind"] == kind]


@pytest.fixture
def captured(tmp_path: Path, keys: Keys) -> Iterator[Captured]:
    directory = tmp_path / "bundles"
    fluxrun.init(directory=directory, capture_key=keys.capture)
    try:
        yield Captured(directory, keys)
    finally:
        fluxrun.shutdown()


@pytest.fixture
def capture_with(tmp_path: Path, keys: Keys) -> Iterator[Any]:
    """Start a capture with extra `fluxrun.init` options: `captured = capture_with(max_body_size=4)`."""

    def start(**options: Any) -> Captured:
        directory = tmp_path / "custom-bundles"
        options.setdefault("capture_key", keys.capture)
        fluxrun.init(directory=directory, **options)
        return Captured(directory, keys)

    try:
        yield start
    finally:
        fluxrun.shutdown()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
