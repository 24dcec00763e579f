"""The aggregator in its own process: it reads the WAL only up to what the server made durable, reports
checkpoints that the server applies, and never outlives a killed server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from servers import free_port

from fluxrun_server.ingest.wal import WALCorruptError, WALReader, WriteAheadLog


def test_the_reader_stops_at_the_durable_lsn_and_reports_checkpoints(tmp_path: Path) -> None:
    with WriteAheadLog(tmp_path / "wal", segment_bytes=300) as wal:  # small segments: reads cross files
        wal.append([b"r%d" % i + b"." * 60 for i in range(1, 11)]).result()
        reported: list[int] = []
        reader = WALReader(tmp_path / "wal", checkpointed=0, durable=4, on_checkpoint=reported.append)
        assert [lsn for lsn, _ in reader.read_from(0)] == [1, 2, 3, 4], "nothing past the durable LSN"
        reader.advance(10)
        reader.advance(7)  # a late, lower notice changes nothing
        records = list(reader.read_from(0, max_records=6))
        assert [lsn for lsn, _ in records] == [1, 2, 3, 4, 5, 6]
        assert records[4][1].startswith(b"r5.")
        reader.checkpoint(6)
        reader.checkpoint(3)  # lower than known: ignored
        assert reported == [6] and reader.checkpointed_lsn == 6
        wal.checkpoint(6)  # what the server does with the report: deletes segments up to it
        assert [lsn for lsn, _ in reader.read_from(0)] == [7, 8, 9, 10]
        with pytest.raises(ValueError):
            reader.checkpoint(11)
        lost = WALReader(tmp_path / "wal", checkpointed=0, durable=10, on_checkpoint=reported.append)
        with pytest.raises(WALCorruptError):
            list(lost.read_from(0))  # LSN 1 was deleted: an error, never a silent skip


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie waiting for its parent counts as gone
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def _aggregators(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"aggregator_process" in cmdline:
            found.append(int(entry))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_the_aggregator_process_does_not_outlive_a_killed_server(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "FLUXRUN_SERVER_DATA_DIR": str(tmp_path / "data"), "FLUXRUN_SERVER_PORT": str(port)}
    command = [sys.executable, "-m", "fluxrun.cli.app", "server"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        aggregators: list[int] = []
        while time.monotonic() < deadline and not aggregators:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json()
                if health["aggregator"]["running"]:  # started, and past its start-up: in its loop
                    aggregators = _aggregators(server.pid)
                    assert aggregators == [health["aggregator"]["pid"]]
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert aggregators, "the server did not start an aggregator process"
        time.sleep(0.5)
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in aggregators) and time.monotonic() < deadline:
        time.sleep(0.1)
    survivors = [p for p in aggregators if _alive(p)]
    for pid in survivors:  # do not leak it into the rest of the run
        os.kill(pid, signal.SIGKILL)
    assert not survivors, "the aggregator process outlived the killed server"
