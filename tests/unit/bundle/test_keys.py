"""Key files: generation, permissions, loading, every failure message, and rotation."""

from __future__ import annotations

import base64
import logging
import os
import re
import stat
import sys
from pathlib import Path

import orjson
import pytest

from fluxrun.bundle import (
    CaptureKey,
    ReplayKey,
    Sealer,
    generate_keys,
    load_capture_key,
    load_replay_key,
    load_replay_keys,
    open_bundle,
    parse_public_signing_key,
    signing_public_key,
)
from fluxrun.errors import BundleError, KeyFileError

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _generate(directory: Path) -> tuple[CaptureKey, ReplayKey]:
    capture_path, replay_path = generate_keys(directory)
    return load_capture_key(capture_path), load_replay_key(replay_path)


def _rewrite(path: Path, **changes: object) -> None:
    document = orjson.loads(path.read_bytes())
    document.update(changes)
    path.write_bytes(orjson.dumps(document))


# --- generate ----------------------------------------------------------------------------------------


def test_generate_writes_matching_pair(tmp_path: Path) -> None:
    capture_path, replay_path = generate_keys(tmp_path / "nested" / "keys")
    assert capture_path == tmp_path / "nested" / "keys" / "capture.key"
    assert replay_path == tmp_path / "nested" / "keys" / "replay.key"

    capture = load_capture_key(capture_path)
    replay = load_replay_key(replay_path)
    assert re.fullmatch(r"sig_[0-9a-f]{16}", capture.signing_key_id)
    assert re.fullmatch(r"rcp_[0-9a-f]{16}", capture.recipient_key_id)
    assert list(replay.recipients) == [capture.recipient_key_id]
    assert list(replay.signers) == [capture.signing_key_id]

    document = orjson.loads(capture_path.read_bytes())
    assert document["kind"] == "fluxrun-capture-key"
    assert document["version"] == 1
    assert orjson.loads(replay_path.read_bytes())["kind"] == "fluxrun-replay-key"


@posix_only
def test_generated_files_are_private(tmp_path: Path) -> None:
    capture_path, replay_path = generate_keys(tmp_path)
    assert _mode(capture_path) == 0o600
    assert _mode(replay_path) == 0o600


def test_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    capture_path, replay_path = generate_keys(tmp_path)
    before = (capture_path.read_bytes(), replay_path.read_bytes())
    with pytest.raises(KeyFileError) as info:
        generate_keys(tmp_path)
    message = str(info.value)
    assert str(capture_path) in message
    assert "--force" in message
    assert "another directory" in message
    assert (capture_path.read_bytes(), replay_path.read_bytes()) == before


def test_generate_refuses_when_only_one_file_exists(tmp_path: Path) -> None:
    (tmp_path / "replay.key").write_text("precious")
    with pytest.raises(KeyFileError, match=r"replay\.key already exists"):
        generate_keys(tmp_path)
    assert not (tmp_path / "capture.key").exists()
    assert (tmp_path / "replay.key").read_text() == "precious"


@posix_only
def test_generate_force_replaces_keys(tmp_path: Path) -> None:
    first, _ = _generate(tmp_path)
    capture_path, replay_path = generate_keys(tmp_path, force=True)
    second = load_capture_key(capture_path)
    assert second.signing_key_id != first.signing_key_id
    assert _mode(capture_path) == 0o600
    assert _mode(replay_path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["capture.key", "replay.key"]


def test_repr_does_not_show_private_material(tmp_path: Path) -> None:
    capture, replay = _generate(tmp_path)
    private_b64 = orjson.loads((tmp_path / "capture.key").read_bytes())["signing_private"]
    assert private_b64 not in repr(capture)
    assert capture.signing_key_id in repr(capture)
    assert capture.recipient_key_id in repr(replay)


# --- loading: every failure says the path, the problem and the fix --------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.key"
    with pytest.raises(KeyFileError) as info:
        load_replay_key(path)
    assert str(path) in str(info.value)
    assert "no such key file" in str(info.value)
    assert "fluxrun keys generate" in str(info.value)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"is a directory; pass the key file inside it .*replay\.key"):
        load_replay_key(tmp_path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "it is empty"),
        (b"   \n", "it is empty"),
        (b"-----BEGIN PRIVATE KEY-----\n", "not JSON"),
        (b"\xff\xfe\x00", "not JSON"),
        (b"[1, 2]", "no 'kind' field"),
        (b'{"version": 1}', "no 'kind' field"),
    ],
)
def test_not_a_key_file(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "replay.key"
    path.write_bytes(content)
    with pytest.raises(KeyFileError) as info:
        load_replay_key(path)
    message = str(info.value)
    assert str(path) in message
    assert "is not a FluxRun key file" in message
    assert expected in message
    assert "fluxrun keys generate" in message


def test_capture_key_where_replay_key_is_needed(tmp_path: Path) -> None:
    capture_path, _ = generate_keys(tmp_path)
    with pytest.raises(KeyFileError) as info:
        load_replay_key(capture_path)
    message = str(info.value)
    assert str(capture_path) in message
    assert "this is a capture key" in message
    assert "need replay.key" in message


def test_replay_key_where_capture_key_is_needed(tmp_path: Path) -> None:
    _, replay_path = generate_keys(tmp_path)
    with pytest.raises(KeyFileError) as info:
        load_capture_key(replay_path)
    assert "this is a replay key" in str(info.value)
    assert "the app needs capture.key" in str(info.value)


def test_unknown_kind(tmp_path: Path) -> None:
    _, replay_path = generate_keys(tmp_path)
    _rewrite(replay_path, kind="ssh-key")
    with pytest.raises(KeyFileError, match="unknown key file kind 'ssh-key'"):
        load_replay_key(replay_path)


@pytest.mark.parametrize("version", [2, 0, None, "1"])
def test_unsupported_version(tmp_path: Path, version: object) -> None:
    capture_path, _ = generate_keys(tmp_path)
    _rewrite(capture_path, version=version)
    with pytest.raises(KeyFileError) as info:
        load_capture_key(capture_path)
    message = str(info.value)
    assert f"key file version {version!r} is not supported" in message
    assert "reads version 1" in message
    assert "pip install -U fluxrun" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("not base64!!", "not valid base64"),
        (base64.b64encode(b"short").decode(), "it decodes to 5 bytes"),
        (base64.b64encode(bytes(33)).decode(), "it decodes to 33 bytes"),
        (12345, "got int"),
    ],
)
def test_bad_key_bytes(tmp_path: Path, value: object, expected: str) -> None:
    capture_path, _ = generate_keys(tmp_path)
    _rewrite(capture_path, signing_private=value)
    with pytest.raises(KeyFileError) as info:
        load_capture_key(capture_path)
    message = str(info.value)
    assert str(capture_path) in message
    assert "'signing_private' must be base64 of a 32-byte key" in message
    assert expected in message


def test_missing_field(tmp_path: Path) -> None:
    capture_path, _ = generate_keys(tmp_path)
    document = orjson.loads(capture_path.read_bytes())
    del document["recipient_public"]
    capture_path.write_bytes(orjson.dumps(document))
    with pytest.raises(KeyFileError, match="missing field 'recipient_public'"):
        load_capture_key(capture_path)


def test_key_id_that_does_not_match_its_key(tmp_path: Path) -> None:
    capture_path, _ = generate_keys(tmp_path)
    _rewrite(capture_path, signing_key_id="sig_0000000000000000")
    with pytest.raises(KeyFileError, match="signing_key_id 'sig_0000000000000000' does not match its key"):
        load_capture_key(capture_path)


def test_replay_entry_with_bad_key(tmp_path: Path) -> None:
    _, replay_path = generate_keys(tmp_path)
    document = orjson.loads(replay_path.read_bytes())
    document["signers"][0]["public"] = "AAAA"
    replay_path.write_bytes(orjson.dumps(document))
    with pytest.raises(KeyFileError, match=r"'signers\[0\]\.public' must be base64 of a 32-byte key"):
        load_replay_key(replay_path)


@pytest.mark.parametrize("recipients", [[], "rcp", [1]])
def test_replay_key_without_usable_recipients(tmp_path: Path, recipients: object) -> None:
    _, replay_path = generate_keys(tmp_path)
    _rewrite(replay_path, recipients=recipients)
    with pytest.raises(KeyFileError) as info:
        load_replay_key(replay_path)
    assert str(replay_path) in str(info.value)
    assert "recipient" in str(info.value)


@posix_only
def test_warns_when_private_key_is_readable_by_others(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, replay_path = generate_keys(tmp_path)
    with caplog.at_level(logging.WARNING, logger="fluxrun"):
        load_replay_key(replay_path)
    assert caplog.records == []

    os.chmod(replay_path, 0o644)
    with caplog.at_level(logging.WARNING, logger="fluxrun"):
        load_replay_key(replay_path)
    [record] = caplog.records
    assert record.name == "fluxrun"
    assert str(replay_path) in record.getMessage()
    assert f"chmod 600 {replay_path}" in record.getMessage()


def test_load_replay_keys_needs_at_least_one(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no replay key file given"):
        load_replay_keys([])


# --- rotation ----------------------------------------------------------------------------------------


def test_rotation_old_and_new_bundles_open_with_merged_keys(tmp_path: Path) -> None:
    old_capture, _ = _generate(tmp_path / "a")
    new_capture, new_replay = _generate(tmp_path / "b")
    old_bundle = Sealer(old_capture, sdk="test").seal(summary={}, payload={"k": "old"}, bundle_id="old")
    new_bundle = Sealer(new_capture, sdk="test").seal(summary={}, payload={"k": "new"}, bundle_id="new")

    merged = load_replay_keys([tmp_path / "b" / "replay.key", tmp_path / "a" / "replay.key"])
    assert set(merged.recipients) == {old_capture.recipient_key_id, new_capture.recipient_key_id}
    assert set(merged.signers) == {old_capture.signing_key_id, new_capture.signing_key_id}
    assert open_bundle(old_bundle, merged).payload == {"k": "old"}
    assert open_bundle(new_bundle, merged).payload == {"k": "new"}

    with pytest.raises(BundleError) as info:
        open_bundle(old_bundle, new_replay)
    assert info.value.reason == "wrong_key"


# --- public signing key text -------------------------------------------------------------------------


def test_public_signing_key_round_trip(tmp_path: Path) -> None:
    capture, replay = _generate(tmp_path)
    key_id, encoded = signing_public_key(capture)
    assert key_id == capture.signing_key_id
    assert len(base64.b64decode(encoded)) == 32

    for text in (f"{key_id}:{encoded}", encoded, f"  {key_id} : {encoded}\n"):
        parsed_id, public = parse_public_signing_key(text)
        assert parsed_id == key_id
        assert public == replay.signers[key_id]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sig_0000000000000000:{b64}", "does not belong to this key"),
        ("rcp_0000000000000000:{b64}", "must be a signing key id"),
        ("{id}:not-base64", "not valid base64 of a 32-byte Ed25519 key"),
        ("AAAA", "not valid base64 of a 32-byte Ed25519 key"),
        ("", "not valid base64"),
    ],
)
def test_public_signing_key_errors(tmp_path: Path, text: str, expected: str) -> None:
    capture, _ = _generate(tmp_path)
    key_id, encoded = signing_public_key(capture)
    with pytest.raises(KeyFileError, match=expected):
        parse_public_signing_key(text.format(b64=encoded, id=key_id))
