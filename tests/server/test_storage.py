"""Object stores and segments: one suite run against the filesystem and against S3 (moto in server mode on
loopback), plus the checks only one backend can make (temporary files, client configuration)."""

from __future__ import annotations

import hashlib
import os
import random
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fluxrun_server.storage import filesystem as filesystem_module
from fluxrun_server.storage.base import ObjectNotFound, ObjectStore, ObjectStoreError
from fluxrun_server.storage.factory import open_store
from fluxrun_server.storage.filesystem import FilesystemStore
from fluxrun_server.storage.s3 import S3Store, make_config
from fluxrun_server.storage.segments import MAGIC, Placement, SegmentWriter, read_index, read_payload

TEMP_SUFFIX = ".fluxrun-tmp"
DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
AWS_UNSET = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """moto's S3 as a real HTTP server on 127.0.0.1 (an ephemeral port), with dummy credentials only."""
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        for name, value in DUMMY_AWS.items():
            mp.setenv(name, value)
        for name in AWS_UNSET:
            mp.delenv(name, raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            yield f"http://{host}:{port}"
        finally:
            server.stop()


def new_s3_store(endpoint: str, *, prefix: str = "tenant/a") -> S3Store:
    return S3Store(
        f"fluxrun-{secrets.token_hex(6)}",
        endpoint_url=endpoint,
        access_key="test",
        secret_key="test",
        prefix=prefix,
        create_bucket=True,
    )


@pytest.fixture(params=["filesystem", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "filesystem":
        return FilesystemStore(tmp_path / "objects")
    return new_s3_store(request.getfixturevalue("moto_url"))


# ---------------------------------------------------------------------------------------------------------------------
# The contract, on both backends


def test_put_get_and_overwrite(store: ObjectStore) -> None:
    store.put("a/b/c.bin", b"hello")
    assert store.get("a/b/c.bin") == b"hello"
    store.put("a/b/c.bin", b"replaced, and longer")
    assert store.get("a/b/c.bin") == b"replaced, and longer"
    store.put("empty", b"")
    assert store.get("empty") == b""
    big = os.urandom(3 * 1024 * 1024 + 17)
    store.put("big", big)
    assert store.get("big") == big


def test_get_range_returns_exactly_the_bytes_asked_for(store: ObjectStore) -> None:
    data = bytes(range(256)) * 40
    store.put("r", data)
    for offset, length in [(0, 1), (0, len(data)), (5, 100), (len(data) - 1, 1), (1000, 4000), (len(data), 0), (7, 0)]:
        assert store.get_range("r", offset, length) == data[offset : offset + length], (offset, length)


@pytest.mark.parametrize(("offset", "length"), [(10_000, 1), (9_999, 2), (0, 10_001), (10_001, 0), (-1, 5), (0, -1)])
def test_get_range_past_the_end_or_negative_is_an_error(store: ObjectStore, offset: int, length: int) -> None:
    store.put("r", b"x" * 10_000)
    with pytest.raises(ObjectStoreError) as info:
        store.get_range("r", offset, length)
    assert not isinstance(info.value, ObjectNotFound)
    assert "'r'" in str(info.value)


def test_missing_keys_raise_object_not_found(store: ObjectStore) -> None:
    for call in (lambda: store.get("nope/x"), lambda: store.get_range("nope/x", 0, 1)):
        with pytest.raises(ObjectNotFound) as info:
            call()
        message = str(info.value)
        assert "nope/x" in message
        assert ("filesystem" in message) or ("S3" in message)
        assert info.value.key == "nope/x"
    assert not store.exists("nope/x")


def test_exists_and_delete_is_idempotent(store: ObjectStore) -> None:
    store.put("d/one", b"1")
    store.put("d/two", b"2")
    assert store.exists("d/one")
    assert not store.exists("d")  # a prefix is not an object
    store.delete("d/one")
    assert not store.exists("d/one")
    with pytest.raises(ObjectNotFound):
        store.get("d/one")
    store.delete("d/one")  # again: no error
    store.delete("never/was")
    assert store.get("d/two") == b"2"


def test_list_filters_by_string_prefix_in_lexicographic_order(store: ObjectStore) -> None:
    keys = ["b", "a/b", "a-c", "a/a/z", "c/d", "a/bc/d", "ab"]
    for key in keys:
        store.put(key, key.encode())
    assert list(store.list()) == sorted(keys)
    assert list(store.list("a/")) == ["a/a/z", "a/b", "a/bc/d"]
    assert list(store.list("a")) == ["a-c", "a/a/z", "a/b", "a/bc/d", "ab"]
    assert list(store.list("a/b")) == ["a/b", "a/bc/d"]
    assert list(store.list("a/a")) == ["a/a/z"]
    assert list(store.list("zzz")) == []
    assert list(store.list("nope/deeper/")) == []
    store.delete("a/b")
    assert list(store.list("a/b")) == ["a/bc/d"]


@pytest.mark.parametrize(
    "key", ["", "/abs", "/", "a//b", "../x", "a/../b", "a/./b", "a/", ".", "..", "a\\b", "x\x00y", "k" + TEMP_SUFFIX]
)
def test_bad_keys_are_rejected(store: ObjectStore, key: str) -> None:
    """Both backends refuse the same keys, so a bucket and a folder hold the same set of names."""
    for call in (
        lambda: store.put(key, b"x"),
        lambda: store.get(key),
        lambda: store.get_range(key, 0, 1),
        lambda: store.exists(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(ObjectStoreError, match="invalid object key"):
            call()
    assert list(store.list()) == []


# ---------------------------------------------------------------------------------------------------------------------
# Segments, on both backends


def random_payloads(count: int, seed: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    payloads = []
    for i in range(count):
        roll = rng.random()
        if roll < 0.01:
            size = 0
        elif roll < 0.03:
            size = rng.randint(100_000, 600_000)  # the occasional big bundle
        else:
            size = rng.randint(1, 20 * 1024)
        payloads.append((f"bundle-{i:04d}-{rng.getrandbits(32):08x}", rng.randbytes(size)))
    return payloads


class CountingStore:
    """Wraps a store to show that reading one payload fetches only that payload's bytes."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.ranges: list[tuple[str, int, int]] = []
        self.full_gets = 0

    def put(self, key: str, data: bytes) -> None:
        self.inner.put(key, data)

    def get(self, key: str) -> bytes:
        self.full_gets += 1
        return self.inner.get(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        self.ranges.append((key, offset, length))
        return self.inner.get_range(key, offset, length)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.inner.list(prefix)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)


def test_a_thousand_payloads_round_trip_through_segments(store: ObjectStore) -> None:
    payloads = random_payloads(1000, seed=1)
    writer = SegmentWriter(store, target_bytes=2 * 1024 * 1024)
    for bundle_id, payload in payloads:
        writer.add(bundle_id, payload)
    assert len(writer) == 1000
    placements = writer.flush()
    assert len(writer) == 0 and writer.buffered_bytes == 0
    assert [p.bundle_id for p in placements] == [b for b, _ in payloads]

    keys = list(dict.fromkeys(p.key for p in placements))
    assert len(keys) > 1, "several MiB with a 2 MiB target should make several segments"
    assert sorted(store.list("segments/")) == sorted(keys)
    for key in keys:
        assert key.startswith("segments/") and key.endswith(".seg")
        assert store.get_range(key, 0, len(MAGIC)) == MAGIC

    counting = CountingStore(store)
    for placement, (_, payload) in zip(placements, payloads, strict=True):
        assert placement.length == len(payload)
        assert placement.sha256 == hashlib.sha256(payload).hexdigest()
        assert read_payload(counting, placement) == payload
    assert counting.full_gets == 0
    assert counting.ranges == [(p.key, p.offset, p.length) for p in placements]

    rebuilt = [p for key in keys for p in read_index(store, key)]
    assert rebuilt == placements


def test_a_corrupted_payload_byte_is_detected(store: ObjectStore) -> None:
    writer = SegmentWriter(store)
    payloads = random_payloads(50, seed=2)
    for bundle_id, payload in payloads:
        writer.add(bundle_id, payload)
    placements = writer.flush()
    assert len({p.key for p in placements}) == 1  # under 8 MiB: one segment
    victim = next(p for p in placements[10:] if p.length > 0)
    data = bytearray(store.get(victim.key))
    data[victim.offset + victim.length // 2] ^= 0x01
    store.put(victim.key, bytes(data))

    with pytest.raises(ObjectStoreError, match=f"payload for bundle {victim.bundle_id} in {victim.key} is corrupt"):
        read_payload(store, victim)
    for placement, (_, payload) in zip(placements, payloads, strict=True):  # its neighbours are intact
        if placement != victim:
            assert read_payload(store, placement) == payload
    assert read_index(store, victim.key) == placements  # the index itself is untouched


def test_damaged_or_truncated_segments_are_refused(store: ObjectStore) -> None:
    writer = SegmentWriter(store, prefix="seg")
    writer.add("one", b"first payload")
    writer.add("two", b"second payload")
    placements = writer.flush()
    key = placements[0].key
    assert key.startswith("seg/")
    original = store.get(key)

    damaged_index = bytearray(original)
    damaged_index[60] ^= 0x20  # inside the JSON index
    store.put(key, bytes(damaged_index))
    with pytest.raises(ObjectStoreError, match="damaged or unknown index: index checksum mismatch"):
        read_index(store, key)

    store.put(key, original[:20])
    with pytest.raises(ObjectStoreError, match="no header"):
        read_index(store, key)

    store.put(key, b"NOTASEG!" + original[8:])
    with pytest.raises(ObjectStoreError, match="magic"):
        read_index(store, key)

    store.put(key, original[:60])
    with pytest.raises(ObjectStoreError, match="truncated index"):
        read_index(store, key)

    store.put(key, original[:-3])  # the last payload lost its tail
    assert read_payload(store, placements[0]) == b"first payload"
    with pytest.raises(ObjectStoreError):
        read_payload(store, placements[1])

    store.delete(key)
    with pytest.raises(ObjectNotFound):
        read_index(store, key)
    with pytest.raises(ObjectNotFound):
        read_payload(store, placements[0])

    wrong = Placement("one", key, placements[0].offset, placements[0].length, "0" * 64)
    store.put(key, original)
    with pytest.raises(ObjectStoreError, match=f"payload for bundle one in {key} is corrupt"):
        read_payload(store, wrong)


def test_segment_writer_edge_cases(store: ObjectStore) -> None:
    writer = SegmentWriter(store, target_bytes=100)
    assert writer.flush() == []
    assert list(store.list()) == []
    writer.add("small", b"a" * 10)
    writer.add("huge", b"b" * 500)  # bigger than the target: a segment of its own
    writer.add("empty", b"")
    assert writer.full
    with pytest.raises(ValueError, match="already added"):
        writer.add("small", b"again")
    with pytest.raises(ValueError, match="non-empty"):
        writer.add("", b"x")
    placements = writer.flush()
    assert [p.bundle_id for p in placements] == ["small", "huge", "empty"]
    assert len({p.key for p in placements}) == 2
    assert [read_payload(store, p) for p in placements] == [b"a" * 10, b"b" * 500, b""]
    writer.add("small", b"a new flush may reuse the id")
    (again,) = writer.flush()
    assert again.key not in {p.key for p in placements}
    assert sorted(store.list()) == sorted({p.key for p in [*placements, again]})
    with pytest.raises(ValueError):
        SegmentWriter(store, target_bytes=0)


def test_segment_keys_sort_by_time() -> None:
    writer = SegmentWriter(FilesystemStore.__new__(FilesystemStore))
    keys = [writer._new_key() for _ in range(3)]
    for key in keys:
        parts = key.split("/")
        assert parts[0] == "segments" and len(parts) == 5
        assert len(parts[1]) == 4 and len(parts[2]) == 2 and len(parts[3]) == 2
        stamp, random_hex = parts[4].removesuffix(".seg").split("-")
        assert len(stamp) == 13 and len(random_hex) == 16
    assert len(set(keys)) == 3
    assert [k.rsplit("/", 1)[1][:13] for k in keys] == sorted(k.rsplit("/", 1)[1][:13] for k in keys)


# ---------------------------------------------------------------------------------------------------------------------
# Filesystem only


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(TEMP_SUFFIX)]


def test_filesystem_keys_are_files_in_subfolders_and_no_temp_files_remain(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    fs = FilesystemStore(root)
    for i in range(20):
        fs.put(f"x/y/{i}.bin", b"v" * i)
        fs.put(f"x/y/{i}.bin", b"w" * i)
    assert (root / "x" / "y" / "7.bin").read_bytes() == b"w" * 7
    assert temp_files(root) == []
    stray = root / "x" / "y" / f".deadbeef{TEMP_SUFFIX}"
    stray.write_bytes(b"left by a crash")
    assert len(list(fs.list())) == 20  # a crashed put's temporary file is not an object


def test_filesystem_readers_see_old_or_new_data_never_a_mix(tmp_path: Path) -> None:
    fs = FilesystemStore(tmp_path)
    old, new = b"O" * (1 << 20), b"N" * (1 << 20) + b"!"
    fs.put("hot", old)
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for i in range(60):
                fs.put("hot", new if i % 2 == 0 else old)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            stop.set()

    writer = threading.Thread(target=write)
    writer.start()
    reads = 0
    while not stop.is_set() or reads < 10:
        assert fs.get("hot") in (old, new)
        assert fs.get_range("hot", 1000, 10) in (b"O" * 10, b"N" * 10)
        reads += 1
    writer.join()
    assert errors == []
    assert temp_files(tmp_path) == []


def test_filesystem_failed_put_keeps_the_old_object_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = FilesystemStore(tmp_path)
    fs.put("k/v", b"old")

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(filesystem_module.os, "replace", broken_replace)
    with pytest.raises(ObjectStoreError, match=r"put 'k/v' failed.*No space left"):
        fs.put("k/v", b"new")
    monkeypatch.undo()
    assert fs.get("k/v") == b"old"
    assert temp_files(tmp_path) == []


def test_filesystem_folders_and_objects_do_not_mix(tmp_path: Path) -> None:
    fs = FilesystemStore(tmp_path)
    fs.put("dir/child", b"c")
    with pytest.raises(ObjectNotFound):
        fs.get("dir")
    with pytest.raises(ObjectNotFound):
        fs.get_range("dir", 0, 1)
    fs.delete("dir")  # not an object: nothing to do
    assert fs.get("dir/child") == b"c"
    with pytest.raises(ObjectStoreError, match="folder"):
        fs.put("dir", b"x")
    with pytest.raises(ObjectStoreError, match="not a folder"):
        fs.put("dir/child/grandchild", b"x")
    with pytest.raises(ObjectNotFound):
        fs.get("dir/child/grandchild")


def test_filesystem_bad_keys_never_touch_anything_outside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    fs = FilesystemStore(root)
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    for key in ["../outside", "a/../../outside", str(outside), "a/../../../x"]:
        with pytest.raises(ObjectStoreError):
            fs.put(key, b"overwritten")
        with pytest.raises(ObjectStoreError):
            fs.delete(key)
    assert list(fs.list("../")) == []
    assert outside.read_bytes() == b"precious"


# ---------------------------------------------------------------------------------------------------------------------
# S3 only


def test_s3_keys_live_under_the_prefix(moto_url: str) -> None:
    s3 = new_s3_store(moto_url, prefix="/bundles/")
    assert s3.prefix == "bundles/"
    s3.put("segments/one.seg", b"1")
    raw = [o["Key"] for o in s3.client.list_objects_v2(Bucket=s3.bucket)["Contents"]]
    assert raw == ["bundles/segments/one.seg"]
    assert list(s3.list()) == ["segments/one.seg"]
    other = S3Store(s3.bucket, endpoint_url=moto_url, access_key="test", secret_key="test", prefix="elsewhere")
    assert list(other.list()) == []
    assert not other.exists("segments/one.seg")


def test_s3_client_uses_path_style_retries_and_timeouts(moto_url: str) -> None:
    s3 = new_s3_store(moto_url)
    config = s3.client.meta.config
    assert config.s3 == {"addressing_style": "path"}
    attempts = config.retries.get("total_max_attempts") or config.retries.get("max_attempts")
    assert config.retries["mode"] == "standard" and attempts >= 3
    assert config.connect_timeout <= 10 and config.read_timeout <= 120
    assert s3.client.meta.region_name == "us-east-1"
    assert make_config(path_style=False).s3 is None
    S3Store(s3.bucket, endpoint_url=moto_url, access_key="test", secret_key="test", create_bucket=True)  # owned: ok


def test_s3_missing_bucket_is_a_store_error_not_a_missing_object(moto_url: str) -> None:
    s3 = S3Store(f"absent-{secrets.token_hex(4)}", endpoint_url=moto_url, access_key="test", secret_key="test")
    with pytest.raises(ObjectStoreError, match="NoSuchBucket") as info:
        s3.get("k")
    assert not isinstance(info.value, ObjectNotFound)
    assert s3.bucket in str(info.value)
    with pytest.raises(ObjectStoreError, match="NoSuchBucket"):
        s3.put("k", b"x")
    with pytest.raises(ObjectStoreError, match="NoSuchBucket"):
        list(s3.list())


def test_s3_unreachable_endpoint_is_a_store_error(moto_url: str) -> None:
    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before use: connections are refused
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=make_config(path_style=True, max_attempts=1),
    )
    s3 = S3Store("b", endpoint_url=endpoint, client=client)
    with pytest.raises(ObjectStoreError, match=r"127\.0\.0\.1.*get 'k' failed: EndpointConnectionError"):
        s3.get("k")


def test_s3_credentials_must_come_in_pairs() -> None:
    with pytest.raises(ValueError, match="both"):
        S3Store("b", endpoint_url="http://127.0.0.1:1", access_key="only-one")


# ---------------------------------------------------------------------------------------------------------------------
# open_store


def test_open_store_file_urls_and_plain_paths(tmp_path: Path) -> None:
    by_url = open_store(f"file://{tmp_path / 'a'}", endpoint_url=None, region=None, access_key=None, secret_key=None)
    assert isinstance(by_url, FilesystemStore) and by_url.root == tmp_path / "a"
    by_path = open_store(str(tmp_path / "b"))
    assert isinstance(by_path, FilesystemStore) and by_path.root == tmp_path / "b"
    by_url.put("k", b"v")
    assert (tmp_path / "a" / "k").read_bytes() == b"v"
    with pytest.raises(ValueError, match="do not apply"):
        open_store(str(tmp_path), endpoint_url="http://127.0.0.1:9000")
    with pytest.raises(ValueError, match="unknown scheme"):
        open_store("gs://bucket/x")
    with pytest.raises(ValueError, match="local"):
        open_store("file://otherhost/x")


def test_open_store_s3_url(moto_url: str) -> None:
    bucket = f"fluxrun-{secrets.token_hex(6)}"
    store = open_store(
        f"s3://{bucket}/bundles/eu", endpoint_url=moto_url, region=None, access_key="test", secret_key="test",
        create_bucket=True,
    )  # fmt: skip
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == (bucket, "bundles/eu/")
    store.put("k", b"v")
    assert store.get("k") == b"v"
    assert [o["Key"] for o in store.client.list_objects_v2(Bucket=bucket)["Contents"]] == ["bundles/eu/k"]
    with pytest.raises(ValueError, match="no bucket"):
        open_store("s3:///just-a-path")
