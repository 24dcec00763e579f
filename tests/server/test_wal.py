"""The ingest WAL on real files: framing, crash recovery, group commit, failure semantics, checkpoints."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import random
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from fluxrun_server.ingest.wal import (
    HEADER_SIZE,
    WALClosedError,
    WALCorruptError,
    WALError,
    WALFullError,
    WALUnhealthyError,
    WALWriteError,
    WriteAheadLog,
)


class Fsync:
    """An fsync the test steers: `hold` parks the next call until released; `fail` makes later calls fail."""

    def __init__(self) -> None:
        self.fail = False
        self.hold: threading.Event | None = None
        self.holding = threading.Event()

    def __call__(self, fd: int) -> None:
        fail = self.fail  # decided on entry, so a held call keeps the mode it started with
        hold, self.hold = self.hold, None
        if hold is not None:
            self.holding.set()
            hold.wait(60)
        if fail:
            raise OSError(errno.EIO, "injected fsync failure")
        os.fsync(fd)


class Write:
    """A write that can run out of disk space, either at once or after half of the bytes."""

    def __init__(self) -> None:
        self.enospc = False
        self.partial = False

    def __call__(self, fd: int, data: memoryview) -> int:
        if self.partial:
            self.partial = False
            self.enospc = True
            return os.write(fd, data[: len(data) // 2])
        if self.enospc:
            raise OSError(errno.ENOSPC, "injected: no space left on device")
        return os.write(fd, data)


def payload(i: int) -> bytes:
    return f"record-{i}-".encode() + bytes([i % 251]) * (i % 37)


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("wal-*.log"))


def frames(path: Path) -> list[tuple[int, int]]:
    """(offset, end) of each frame in a well-formed segment, parsed independently of the WAL."""
    data = path.read_bytes()
    spans, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack_from(">I", data, offset + 4)
        spans.append((offset, offset + HEADER_SIZE + length))
        offset += HEADER_SIZE + length
    return spans


def opened(directory: Path, **kwargs: object) -> WriteAheadLog:
    wal = WriteAheadLog(directory, **kwargs)  # type: ignore[arg-type]
    wal.open()
    return wal


def fill(wal: WriteAheadLog, count: int, start: int = 0) -> dict[int, bytes]:
    written = {}
    for i in range(start, start + count):
        (lsn,) = wal.append([payload(i)]).result()
        written[lsn] = payload(i)
    return written


@pytest.fixture
def wal(tmp_path: Path) -> Iterator[WriteAheadLog]:
    log = opened(tmp_path / "wal")
    yield log
    log.close()


# -- round trips ---------------------------------------------------------------------------------------


def test_records_round_trip_across_many_segments(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path, segment_bytes=300) as wal:
        written: dict[int, bytes] = {}
        for batch in range(60):
            records = [payload(batch * 5 + k) for k in range(batch % 5 + 1)]
            lsns = wal.append(records).result()
            written.update(zip(lsns, records, strict=True))
        assert list(written) == list(range(1, len(written) + 1))
        assert dict(wal.read_from(0)) == written
        assert wal.last_lsn == len(written)
        stats = wal.stats
        assert (stats.appends, stats.records) == (60, len(written))
        assert stats.bytes == sum(HEADER_SIZE + len(p) for p in written.values())
    files = segments(tmp_path)
    assert len(files) > 5
    assert all(f.stat().st_size <= 300 for f in files)
    # a segment's name is the LSN of its first frame, and LSNs continue across segments
    assert int(files[1].name[4:24]) - 1 == int(files[0].name[4:24]) - 1 + len(frames(files[0]))


def test_reopening_recovers_every_record_and_continues_the_lsns(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path, segment_bytes=500) as wal:
        written = fill(wal, 200)
    wal = WriteAheadLog(tmp_path, segment_bytes=500)
    report = wal.open()
    try:
        assert (report.records, report.last_lsn, report.truncated_bytes) == (200, 200, 0)
        assert report.segments == len(segments(tmp_path)) > 1
        assert dict(wal.read_from(0)) == written
        assert wal.append([b"after"]).result() == [201]
        assert wal.backlog_records == 201
    finally:
        wal.close()


def test_an_empty_append_resolves_at_once_and_bad_records_are_refused(wal: WriteAheadLog) -> None:
    assert wal.append([]).result() == []
    with pytest.raises(TypeError):
        wal.append(["text"])  # type: ignore[list-item]
    assert wal.stats.fsyncs == 0


def test_read_from_pages_through_segments_like_the_aggregator(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path, segment_bytes=256) as wal:
        written = fill(wal, 90)
        assert [lsn for lsn, _ in wal.read_from(17, max_records=5)] == [18, 19, 20, 21, 22]
        assert list(wal.read_from(0, max_records=0)) == []
        assert list(wal.read_from(90)) == []
        got: dict[int, bytes] = {}
        last = 0
        while batch := list(wal.read_from(last, max_records=7)):
            got.update(batch)
            last = batch[-1][0]
        assert got == written


def test_a_group_whose_fsync_has_not_finished_is_not_readable(tmp_path: Path) -> None:
    fsync = Fsync()
    wal = opened(tmp_path, _fsync=fsync)
    try:
        written = fill(wal, 3)
        release = threading.Event()
        fsync.hold = release
        pending = wal.append([b"in flight"])
        assert fsync.holding.wait(60)  # written to the file, fsync not returned yet
        assert b"in flight" in segments(tmp_path)[-1].read_bytes()
        assert dict(wal.read_from(0)) == written
        assert wal.backlog_records == 3
        release.set()
        assert pending.result() == [4]
        assert dict(wal.read_from(3)) == {4: b"in flight"}
    finally:
        wal.close()


# -- torn tails and corruption -------------------------------------------------------------------------


def test_a_torn_tail_is_cut_at_every_byte_of_the_last_frame(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with WriteAheadLog(tmp_path / "source") as wal:
        written = fill(wal, 5)
    (segment,) = segments(tmp_path / "source")
    data = segment.read_bytes()
    last_start, last_end = frames(segment)[-1]
    assert last_end == len(data)
    caplog.set_level(logging.WARNING, logger="fluxrun_server.wal")
    for cut in range(last_start, len(data)):
        directory = tmp_path / f"cut-{cut}"
        directory.mkdir()
        (directory / segment.name).write_bytes(data[:cut])
        wal = WriteAheadLog(directory)
        report = wal.open()
        try:
            assert (report.records, report.last_lsn, report.truncated_bytes) == (4, 4, cut - last_start), cut
            assert dict(wal.read_from(0)) == {lsn: written[lsn] for lsn in range(1, 5)}
            assert (directory / segment.name).stat().st_size == last_start
            assert wal.append([b"next"]).result() == [5]
        finally:
            wal.close()
        assert dict(opened_and_read(directory)) == {**{lsn: written[lsn] for lsn in range(1, 5)}, 5: b"next"}
    truncations = [r for r in caplog.records if r.name == "fluxrun_server.wal" and "torn tail" in r.getMessage()]
    assert len(truncations) == len(data) - last_start - 1  # every cut except the clean frame boundary


def opened_and_read(directory: Path) -> list[tuple[int, bytes]]:
    with WriteAheadLog(directory) as wal:
        return list(wal.read_from(0))


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00" * 4096,  # a file extended by the crash but never written
        random.Random(7).randbytes(3000),
        b"FW\x01\x03" + b"\xff" * 40,  # a header whose length runs past the end
        b"F",
    ],
    ids=["zeros", "random", "bogus-header", "one-byte"],
)
def test_garbage_after_the_last_frame_is_cut(tmp_path: Path, garbage: bytes) -> None:
    with WriteAheadLog(tmp_path) as wal:
        written = fill(wal, 10)
    (segment,) = segments(tmp_path)
    size = segment.stat().st_size
    with segment.open("ab") as file:
        file.write(garbage)
    wal = WriteAheadLog(tmp_path)
    report = wal.open()
    try:
        assert (report.records, report.truncated_bytes) == (10, len(garbage))
        assert segment.stat().st_size == size
        assert dict(wal.read_from(0)) == written
    finally:
        wal.close()


def test_a_bad_crc_in_the_last_record_is_cut(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path) as wal:
        written = fill(wal, 6)
    (segment,) = segments(tmp_path)
    start, end = frames(segment)[-1]
    data = bytearray(segment.read_bytes())
    data[end - 1] ^= 0x01
    segment.write_bytes(bytes(data))
    wal = WriteAheadLog(tmp_path)
    report = wal.open()
    try:
        assert (report.records, report.last_lsn, report.truncated_bytes) == (5, 5, end - start)
        assert dict(wal.read_from(0)) == {lsn: written[lsn] for lsn in range(1, 6)}
    finally:
        wal.close()


def test_a_torn_group_whose_later_frames_reached_the_disk_is_cut(tmp_path: Path) -> None:
    """Pages of an unfinished write can land out of order: a hole with intact frames after it in the same
    (never acknowledged) write is a torn tail, not damage to acknowledged data."""
    with WriteAheadLog(tmp_path) as wal:
        written = fill(wal, 3)
        wal.append([b"group-a" * 9, b"group-b" * 9, b"group-c" * 9]).result()
    (segment,) = segments(tmp_path)
    spans = frames(segment)
    hole_start, hole_end = spans[4]  # group-b: its page never made it; group-c's did
    data = bytearray(segment.read_bytes())
    data[hole_start:hole_end] = bytes(hole_end - hole_start)
    segment.write_bytes(bytes(data))
    wal = WriteAheadLog(tmp_path)
    report = wal.open()
    try:
        assert (report.records, report.last_lsn, report.truncated_bytes) == (4, 4, len(data) - hole_start)
        assert dict(wal.read_from(0)) == {**written, 4: b"group-a" * 9}
    finally:
        wal.close()


def test_corruption_in_an_older_segment_is_an_error_naming_the_file(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path, segment_bytes=200) as wal:
        fill(wal, 40)
    files = segments(tmp_path)
    assert len(files) > 2
    damaged = files[1]
    start, end = frames(damaged)[1]
    data = bytearray(damaged.read_bytes())
    data[end - 2] ^= 0x40
    damaged.write_bytes(bytes(data))
    before = {f: f.read_bytes() for f in segments(tmp_path)}
    with pytest.raises(WALCorruptError) as raised:
        WriteAheadLog(tmp_path).open()
    assert raised.value.path == damaged and raised.value.offset == start
    assert damaged.name in str(raised.value) and f"offset {start}" in str(raised.value)
    assert {f: f.read_bytes() for f in segments(tmp_path)} == before  # nothing was dropped
    with pytest.raises(WALCorruptError):  # the failed open released the directory lock
        WriteAheadLog(tmp_path).open()


def test_damage_followed_by_a_later_write_in_the_newest_segment_is_an_error(tmp_path: Path) -> None:
    """A later write unit proves the damaged one had been fsynced and acknowledged: no silent cut."""
    with WriteAheadLog(tmp_path) as wal:
        fill(wal, 4)  # four acknowledged appends, four write units
    (segment,) = segments(tmp_path)
    start, _end = frames(segment)[1]
    data = bytearray(segment.read_bytes())
    data[start + HEADER_SIZE] ^= 0xFF
    segment.write_bytes(bytes(data))
    with pytest.raises(WALCorruptError, match="later write") as raised:
        WriteAheadLog(tmp_path).open()
    assert raised.value.offset == start
    assert segment.read_bytes() == bytes(data)


def test_a_missing_segment_is_an_error(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path, segment_bytes=200) as wal:
        fill(wal, 40)
    files = segments(tmp_path)
    files[1].unlink()
    with pytest.raises(WALCorruptError, match="records are missing") as raised:
        WriteAheadLog(tmp_path).open()
    assert raised.value.path == files[2]


# -- group commit --------------------------------------------------------------------------------------


def test_fifty_threads_share_fsyncs_and_get_unique_increasing_lsns(tmp_path: Path) -> None:
    fsync = Fsync()
    wal = opened(tmp_path, _fsync=fsync)
    threads_count, per_thread = 50, 20
    everyone_queued = threading.Event()
    fsync.hold = everyone_queued  # the first fsync waits until all 50 first appends are queued behind it
    queued = [0]
    counter = threading.Lock()
    results: dict[int, list[tuple[int, bytes]]] = {}
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            mine = []
            for i in range(per_thread):
                record = f"thread-{t}-{i}".encode()
                future = wal.append([record])
                if i == 0:
                    with counter:
                        queued[0] += 1
                        if queued[0] == threads_count:
                            everyone_queued.set()
                (lsn,) = future.result()
                mine.append((lsn, record))
            results[t] = mine
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(threads_count)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        total = threads_count * per_thread
        lsns = [lsn for mine in results.values() for lsn, _ in mine]
        assert sorted(lsns) == list(range(1, total + 1))
        for mine in results.values():
            assert [lsn for lsn, _ in mine] == sorted(lsn for lsn, _ in mine)
        stored = dict(wal.read_from(0))
        assert all(stored[lsn] == record for mine in results.values() for lsn, record in mine)
        stats = wal.stats
        assert stats.appends == total and stats.records == total
        assert stats.fsyncs < stats.appends
    finally:
        wal.close()


def test_a_hundred_concurrent_async_appends(wal: WriteAheadLog) -> None:
    async def main() -> list[list[int]]:
        return await asyncio.gather(*(wal.append_async([f"async-{i}".encode()]) for i in range(100)))

    results = asyncio.run(main())
    assert sorted(lsn for (lsn,) in results) == list(range(1, 101))
    stored = dict(wal.read_from(0))
    assert all(stored[lsn] == f"async-{i}".encode() for i, (lsn,) in enumerate(results))
    assert wal.stats.appends == 100


def test_a_group_window_still_acknowledges_everything(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path, group_window_s=0.002) as wal:
        futures = [wal.append([payload(i), payload(i + 1)]) for i in range(30)]
        lsns = [lsn for future in futures for lsn in future.result()]
        assert lsns == list(range(1, 61))


def test_a_cancelled_append_is_never_written(tmp_path: Path) -> None:
    fsync = Fsync()
    wal = opened(tmp_path, _fsync=fsync)
    try:
        release = threading.Event()
        fsync.hold = release
        first = wal.append([b"first"])
        assert fsync.holding.wait(60)
        second = wal.append([b"second"])
        assert second.cancel()
        release.set()
        assert first.result() == [1]
        assert wal.append([b"third"]).result() == [2]
        assert list(wal.read_from(0)) == [(1, b"first"), (2, b"third")]
    finally:
        wal.close()


# -- failures ------------------------------------------------------------------------------------------


def test_an_fsync_failure_fails_the_group_and_poisons_the_log(tmp_path: Path) -> None:
    fsync = Fsync()
    wal = opened(tmp_path, _fsync=fsync)
    try:
        acknowledged = fill(wal, 10)
        release = threading.Event()
        fsync.hold = release
        before = wal.append([b"before"])
        assert fsync.holding.wait(60)  # this fsync succeeds; the next group queues up behind it
        doomed: list[Future[list[int]]] = [wal.append([b"doomed-1", b"doomed-2"]), wal.append([b"doomed-3"])]
        fsync.fail = True
        release.set()
        acknowledged[before.result()[0]] = b"before"
        for future in doomed:
            assert isinstance(future.exception(), WALWriteError)
        assert not wal.healthy
        assert isinstance(wal.last_error, OSError) and wal.last_error.errno == errno.EIO
        fsync.fail = False  # even a disk that "recovered" must not be trusted again
        later = wal.append([b"later"])
        assert later.done() and isinstance(later.exception(), WALUnhealthyError)
        with pytest.raises(WALUnhealthyError):
            asyncio.run(wal.append_async([b"later-async"]))
        assert wal.stats.appends == 11
    finally:
        wal.close()

    stored = dict(opened_and_read(tmp_path))
    assert {lsn: stored.get(lsn) for lsn in acknowledged} == acknowledged
    unacknowledged = {lsn: record for lsn, record in stored.items() if lsn not in acknowledged}
    assert set(unacknowledged.values()) <= {b"doomed-1", b"doomed-2", b"doomed-3"}


def test_a_failed_write_poisons_the_log(tmp_path: Path) -> None:
    def broken(fd: int, data: memoryview) -> int:
        raise OSError(errno.EIO, "injected write failure")

    wal = opened(tmp_path, _write=broken)
    try:
        assert isinstance(wal.append([b"x"]).exception(), WALWriteError)
        assert not wal.healthy
        assert isinstance(wal.append([b"y"]).exception(), WALUnhealthyError)
    finally:
        wal.close()


@pytest.mark.parametrize("partial", [False, True], ids=["nothing-written", "half-written"])
def test_a_full_disk_refuses_the_group_and_stays_healthy(tmp_path: Path, partial: bool) -> None:
    write = Write()
    wal = opened(tmp_path, _write=write)
    try:
        acknowledged = fill(wal, 5)
        (segment,) = segments(tmp_path)
        size = segment.stat().st_size
        write.partial = partial
        write.enospc = not partial
        with pytest.raises(WALFullError):
            wal.append([b"too much", b"data"]).result()
        assert wal.healthy and wal.last_error is None
        assert segment.stat().st_size == size  # a half-written group was cut off again
        with pytest.raises(WALFullError):
            asyncio.run(wal.append_async([b"still full"]))
        write.enospc = False
        assert wal.append([b"space again"]).result() == [6]
    finally:
        wal.close()
    wal = WriteAheadLog(tmp_path)
    report = wal.open()
    try:
        assert report.truncated_bytes == 0
        assert dict(wal.read_from(0)) == {**acknowledged, 6: b"space again"}
    finally:
        wal.close()


# -- checkpoints and backlog ---------------------------------------------------------------------------


def test_checkpoint_deletes_stored_segments_and_survives_reopen(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path, segment_bytes=256) as wal:
        written = fill(wal, 60)
        firsts = [int(f.name[4:24]) for f in segments(tmp_path)]
        lasts = [nxt - 1 for nxt in firsts[1:]] + [60]
        assert wal.backlog_records == 60
        assert wal.backlog_bytes == sum(HEADER_SIZE + len(p) for p in written.values())

        wal.checkpoint(33)
        kept = {f"wal-{first:020d}.log" for first, last in zip(firsts, lasts, strict=True) if last > 33}
        assert {f.name for f in segments(tmp_path)} == kept
        assert wal.checkpointed_lsn == 33
        assert next(wal.read_from(0))[0] == 34  # read_from skips what is checkpointed
        assert wal.backlog_records == 27
        assert wal.backlog_bytes == sum(HEADER_SIZE + len(written[lsn]) for lsn in range(34, 61))
        wal.checkpoint(10)  # an older checkpoint is ignored
        assert wal.checkpointed_lsn == 33
        with pytest.raises(ValueError):
            wal.checkpoint(61)

    wal = WriteAheadLog(tmp_path, segment_bytes=256)
    wal.open()
    try:
        assert wal.checkpointed_lsn == 33
        assert dict(wal.read_from(0)) == {lsn: written[lsn] for lsn in range(34, 61)}
        assert wal.backlog_records == 27
        assert wal.backlog_bytes == sum(HEADER_SIZE + len(written[lsn]) for lsn in range(34, 61))
        wal.checkpoint(60)
        assert len(segments(tmp_path)) == 1  # the active segment always stays
        assert (wal.backlog_records, wal.backlog_bytes) == (0, 0)
        assert list(wal.read_from(0)) == []
    finally:
        wal.close()

    with WriteAheadLog(tmp_path, segment_bytes=256) as wal:
        assert wal.checkpointed_lsn == 60
        assert wal.append([b"after everything was stored"]).result() == [61]


def test_a_checkpoint_past_the_last_segment_starts_a_fresh_one(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path, segment_bytes=64) as wal:
        fill(wal, 3)
        wal.checkpoint(3)
    for segment in segments(tmp_path):
        segment.unlink()  # e.g. an operator cleaned up a fully stored WAL
    with WriteAheadLog(tmp_path) as wal:
        assert wal.append([b"x"]).result() == [4]


def test_a_malformed_checkpoint_file_is_an_error(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path) as wal:
        fill(wal, 2)
    (tmp_path / "checkpoint").write_text("12x\n")
    with pytest.raises(WALCorruptError, match="checkpoint"):
        WriteAheadLog(tmp_path).open()


# -- lifecycle -----------------------------------------------------------------------------------------


def test_lifecycle_errors(tmp_path: Path) -> None:
    wal = WriteAheadLog(tmp_path)
    assert isinstance(wal.append([b"x"]).exception(), WALClosedError)
    wal.open()
    with pytest.raises(WALError, match="in use"):
        WriteAheadLog(tmp_path).open()
    with pytest.raises(WALError):
        wal.open()
    queued = [wal.append([payload(i)]) for i in range(20)]
    wal.close()
    assert [f.result() for f in queued] == [[i] for i in range(1, 21)]  # close flushed the queue
    wal.close()
    assert isinstance(wal.append([b"x"]).exception(), WALClosedError)
    with pytest.raises(WALClosedError):
        wal.read_from(0)
    assert len(opened_and_read(tmp_path)) == 20


# -- crashes -------------------------------------------------------------------------------------------

CHILD = """
import sys, threading
from fluxrun_server.ingest.wal import WriteAheadLog

wal = WriteAheadLog(sys.argv[1], segment_bytes=16 * 1024)
wal.open()
out = threading.Lock()

def work(t):
    i = 0
    while True:
        records = [f"{sys.argv[2]}/{t}/{i}/{k}".encode() * (1 + (i * 7 + k) % 40) for k in range(1 + i % 3)]
        lsns = wal.append(records).result()
        with out:
            sys.stdout.write(" ".join(f"{lsn}={r.decode()}" for lsn, r in zip(lsns, records)) + "\\n")
            sys.stdout.flush()
        i += 1

threads = [threading.Thread(target=work, args=(t,), daemon=True) for t in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
"""


def test_every_acknowledged_record_survives_sigkill(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    directory = tmp_path / "wal"
    acknowledged: dict[int, bytes] = {}
    for round_ in range(3):
        kill_after = rng.randint(1, 600)
        errors = tmp_path / f"child-{round_}.err"
        with (
            errors.open("wb") as stderr,
            subprocess.Popen(
                [sys.executable, "-c", CHILD, str(directory), str(round_)], stdout=subprocess.PIPE, stderr=stderr
            ) as child,
        ):
            assert child.stdout is not None
            lines = []
            while len(lines) < kill_after:
                line = child.stdout.readline()
                if not line:
                    pytest.fail(f"child died: {errors.read_text()}")
                lines.append(line)
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
            lines += child.stdout.read().splitlines(keepends=True)  # acknowledged before it died
        for line in lines:
            if line.endswith(b"\n"):
                for item in line.split():
                    lsn, record = item.split(b"=", 1)
                    acknowledged[int(lsn)] = record
        stored = dict(opened_and_read(directory))
        missing = {lsn for lsn in acknowledged if stored.get(lsn) != acknowledged[lsn]}
        assert not missing, f"seed {seed}, round {round_}: acknowledged LSNs lost or changed: {sorted(missing)[:20]}"
