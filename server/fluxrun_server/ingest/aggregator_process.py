"""The aggregator in a process of its own, so that it does not take the GIL from the request path.

Aggregation (parse each bundle again, pack segment objects, build and insert the index rows) is CPU-bound
Python, more per bundle than the server's whole request path. On a thread of the server process it held
the GIL a third of the time or more at the ingest target's rate, and every request, WAL commit and verifier
round trip queued behind it. In its own process it runs on the other core.

The split keeps one writer per file:
- The server process keeps the `WriteAheadLog`: it appends, fsyncs, and writes the checkpoint file and
  deletes segments. After each append it tells the aggregator process how far the log is durable.
- The aggregator process reads the segment files through a `WALReader` (never past the durable LSN it was
  told), writes the segment objects and the index rows, and reports each checkpoint LSN back; the server
  applies it with `WriteAheadLog.checkpoint`. The crash-safety order of `aggregator.py` is unchanged:
  segment object, index commit, then checkpoint (now one message later). A checkpoint that never reaches
  the server only means those records are indexed again after a restart, which stores them once.

The link is the child's stdin and stdout, one JSON object a line. Server to child: the configuration (first
line), then `{"durable": lsn}` and finally `{"stop": true}`. Child to server: `{"ready": true}`,
`{"checkpoint": lsn, "stored": n, "duplicates": n}` and `{"status": ..., "last_error": ...}`.

The child is a direct child of the server and exits as soon as its stdin reaches end of file without a
stop: the server is gone (killed, crashed), so nothing will apply its checkpoints, and a restarted server
starts its own aggregator. A lock file in the data folder makes that one wait for this one to be gone, so
two aggregators never index the same WAL at once. If the child dies while the server runs, the server
starts another one after a second.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import orjson

from fluxrun_server.ingest.wal import WriteAheadLog
from fluxrun_server.settings import ServerSettings

__all__ = ["LOCK_NAME", "AggregatorProcess", "main"]

log = logging.getLogger("fluxrun_server.aggregator")

LOCK_NAME = "aggregator.lock"  # in DATA_DIR: held by the running aggregator process
RESTART_DELAY_S = 1.0
MAX_RESTART_DELAY_S = 30.0  # a child that keeps dying (its store unreachable at start) is restarted ever slower
SEND_EVERY_S = 0.005  # the durable LSN reaches the child at most this often (it costs visibility at most this)
LOCK_WAIT_S = 60.0  # how long a new aggregator waits for the previous one (of a killed server) to exit


class AggregatorProcess:
    """Server side: runs the aggregator process, feeds it durable LSNs, applies its checkpoints.

    Same surface as `Aggregator` for the rest of the server: `start`, `stop`, `wake`, and the `stored`,
    `duplicates` and `last_error` counters that /healthz shows (as last reported by the process).
    """

    def __init__(self, wal: WriteAheadLog, settings: ServerSettings, *, restart_delay_s: float = RESTART_DELAY_S):
        self.wal = wal
        self.settings = settings
        self.restart_delay_s = restart_delay_s
        self.stored = 0
        self.duplicates = 0
        self.quarantined = 0
        self.last_error: str | None = None
        self.failing_since: float | None = None  # time.time() the current run of failed passes began
        self.pid: int | None = None
        self.ready = False  # the current process said it is running (for /healthz)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._supervisor: threading.Thread | None = None

    def start(self) -> None:
        self._supervisor = threading.Thread(target=self._supervise, name="fluxrun-aggregator-link", daemon=True)
        self._supervisor.start()

    def wake(self) -> None:
        """Records were made durable: the process is told the new durable LSN (coalesced, off this thread)."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Let the process finish its pass and exit; its last checkpoints are applied before this returns."""
        self._stopping.set()
        self._wake.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout)
        proc = self._proc
        if proc is not None and proc.poll() is None:
            log.warning("the aggregator process did not stop within %.0f s; killing it", timeout)
            proc.kill()
            proc.wait()

    # -- the link ------------------------------------------------------------------------------------

    def _supervise(self) -> None:
        delay = self.restart_delay_s
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                code = self._run_child()
            except Exception as exc:
                log.exception("the aggregator process link failed")
                self.last_error = f"{type(exc).__name__}: {exc}"
                code = None
            if self._stopping.is_set():
                return
            if time.monotonic() - started > 2 * MAX_RESTART_DELAY_S:
                delay = self.restart_delay_s  # it ran for a while: a new failure, not the same one again
            if delay == self.restart_delay_s:  # logged once per run of exits, not at every restart
                log.error("the aggregator process exited with code %s; restarting it (backing off)", code)
            self.last_error = f"the aggregator process exited (code {code}); restarting it"
            self.failing_since = self.failing_since or time.time()
            self._stopping.wait(delay)
            delay = min(MAX_RESTART_DELAY_S, delay * 2)

    def _run_child(self) -> int | None:
        proc = self._proc = subprocess.Popen(
            [sys.executable, "-m", "fluxrun_server.ingest.aggregator_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.pid = proc.pid
        self.ready = False
        assert proc.stdin is not None and proc.stdout is not None
        config = {
            "settings": self.settings.model_dump(mode="json"),
            "checkpointed": self.wal.checkpointed_lsn,
            "durable": self.wal.last_lsn,
            "log_level": logging.getLogger("fluxrun_server").getEffectiveLevel(),
        }
        gone = threading.Event()
        sender = threading.Thread(
            target=self._send,
            args=(proc.stdin, orjson.dumps(config), gone),
            name="fluxrun-aggregator-feed",
            daemon=True,
        )
        sender.start()
        try:
            for line in proc.stdout:
                self._receive(orjson.loads(line))
        finally:
            self.ready = False
            gone.set()
            self._wake.set()  # the sender sees the process gone and ends
            sender.join()
            code = proc.wait()
            proc.stdout.close()
            with contextlib.suppress(OSError):
                proc.stdin.close()
        return code

    def _send(self, stdin: IO[bytes], config: bytes, gone: threading.Event) -> None:
        sent = -1
        try:
            stdin.write(config + b"\n")
            stdin.flush()
            while not gone.is_set():
                self._wake.wait()
                self._wake.clear()
                stopping = self._stopping.is_set()
                durable = self.wal.last_lsn
                if durable > sent:
                    stdin.write(b'{"durable":%d}\n' % durable)
                    sent = durable
                if stopping:
                    stdin.write(b'{"stop":true}\n')
                    stdin.flush()
                    return
                stdin.flush()
                # Requests are acknowledged hundreds of times a second: one message per SEND_EVERY_S at most,
                # rather than a write, a flush and a wake-up of the child per request.
                gone.wait(SEND_EVERY_S)
        except (BrokenPipeError, ValueError):  # the process is gone; the supervisor restarts it
            return
        finally:
            with contextlib.suppress(OSError):
                stdin.close()

    def _receive(self, message: dict[str, Any]) -> None:
        if message.get("ready"):
            self.ready = True
            self.last_error = self.failing_since = None  # a new process: its passes report from here on
        if "checkpoint" in message:
            try:
                self.wal.checkpoint(int(message["checkpoint"]))
            except Exception as exc:  # the records stay in the WAL: indexed again (once) after a restart
                log.exception("could not apply the aggregator's WAL checkpoint")
                self.last_error = f"checkpoint: {type(exc).__name__}: {exc}"
        if "stored" in message:
            self.stored = int(message["stored"])
            self.duplicates = int(message["duplicates"])
        if "status" in message:
            self.last_error = message.get("last_error")
            self.failing_since = message.get("failing_since")
            self.quarantined = int(message.get("quarantined") or 0)


# -- the child process -------------------------------------------------------------------------------


class _Out:
    """Lines to the server on stdout (fd 1), whole, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        data = memoryview(orjson.dumps(message) + b"\n")
        with self._lock:
            while data:
                data = data[os.write(1, data) :]


def _lock_data_dir(data_dir: Path) -> int:
    """Hold DATA_DIR/aggregator.lock; wait (bounded) for an aggregator of a killed server to exit first."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + LOCK_WAIT_S
    warned = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"another aggregator holds {data_dir / LOCK_NAME}") from None
            if not warned and time.monotonic() > deadline - LOCK_WAIT_S + 5:
                log.warning("waiting for the previous aggregator process to exit (%s)", data_dir / LOCK_NAME)
                warned = True
            time.sleep(0.05)


def main() -> int:
    """The aggregator process: see the module docstring."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the server, which stops this
    stdin = sys.stdin.buffer
    first = stdin.readline()
    if not first:
        return 0
    config = orjson.loads(first)
    logging.basicConfig(level=config.get("log_level", logging.WARNING), format="%(levelname)s %(name)s: %(message)s")

    from fluxrun_server.index.database import make_engine
    from fluxrun_server.ingest.aggregator import Aggregator
    from fluxrun_server.ingest.wal import WALReader
    from fluxrun_server.storage.factory import open_store

    settings = ServerSettings(**config["settings"])
    out = _Out()
    stopping = threading.Event()
    lock_fd = _lock_data_dir(settings.data_dir)
    aggregator: Aggregator | None = None

    def report_checkpoint(lsn: int) -> None:
        assert aggregator is not None
        out.send({"checkpoint": lsn, "stored": aggregator.stored, "duplicates": aggregator.duplicates})

    def report_status(agg: Aggregator) -> None:
        out.send(
            {
                "status": "error" if agg.last_error else "ok",
                "last_error": agg.last_error,
                "failing_since": agg.failing_since,
                "quarantined": agg.quarantined,
            }
        )

    reader = WALReader(
        settings.wal_dir,
        checkpointed=int(config["checkpointed"]),
        durable=int(config["durable"]),
        on_checkpoint=report_checkpoint,
    )
    engine = make_engine(settings.resolved_database_url)
    store = open_store(
        settings.resolved_object_store_url,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
    )
    aggregator = Aggregator(
        reader,
        store,
        engine,
        batch=settings.aggregate_batch,
        interval_s=settings.aggregate_interval_s,
        segment_target_bytes=settings.segment_target_bytes,
        on_pass=report_status,
    )

    def listen() -> None:
        assert aggregator is not None
        for line in stdin:
            message = orjson.loads(line)
            if "durable" in message:
                reader.advance(int(message["durable"]))
                aggregator.wake()
            if message.get("stop"):
                stopping.set()
                aggregator.request_stop()
        if not stopping.is_set():
            # End of file without a stop: the server is gone, and with it whoever would apply a checkpoint.
            # Exit now, mid-pass if need be: every step is safe to repeat after the next start.
            os._exit(0)

    threading.Thread(target=listen, name="fluxrun-aggregator-listen", daemon=True).start()
    out.send({"ready": True})
    try:
        aggregator.run()
    finally:
        engine.dispose()
        os.close(lock_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
