"""WAL -> object store -> index, as a Hypothesis state machine with crashes at random points.

Steps: acknowledge bundles into the WAL (sometimes a retry of one already acknowledged, sometimes a poison
record the index refuses: a summary status of 2^64-1), aggregate a batch
with a crash before the segment object, after it, after the index rows but before the commit, or after
the commit but before the WAL checkpoint; restart (a new WAL and aggregator on the same folders, sometimes
with a torn write at the end of the newest segment). A crash is a BaseException, so nothing in the
aggregator can catch it, as nothing catches SIGKILL.

After every step: the index never points at a missing or different payload, holds only acknowledged
bundles, and counts each execution once in its issue. At the end, after a restart and a full drain:
acknowledged ⊆ stored (poison records in the quarantine, with their bytes), and another restart and
drain changes nothing (recovery is idempotent).
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy import text
from sqlmodel import Session

from fluxrun.bundle import Sealer, load_capture_key
from fluxrun_server import admin
from fluxrun_server.index.database import make_engine, migrate
from fluxrun_server.ingest.aggregator import Aggregator
from fluxrun_server.ingest.records import pack_record
from fluxrun_server.ingest.wal import WriteAheadLog
from fluxrun_server.storage.filesystem import FilesystemStore
from fluxrun_server.storage.segments import Placement, read_payload

CRASH_POINTS = ["none", "before_segment", "after_segment", "before_commit", "before_checkpoint"]


class Crash(BaseException):
    """The process died here (not an Exception: nothing in the aggregator may catch it)."""


class CrashingStore(FilesystemStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.crash: str | None = None

    def put(self, key: str, data: bytes) -> None:
        if self.crash == "before_segment" and key.startswith("segments/"):
            raise Crash(self.crash)
        super().put(key, data)
        if self.crash == "after_segment" and key.startswith("segments/"):
            raise Crash(self.crash)


class CrashingLog:
    """The aggregator's view of the WAL, which can die just before the checkpoint."""

    def __init__(self, wal: WriteAheadLog) -> None:
        self.wal = wal
        self.crash: str | None = None

    @property
    def checkpointed_lsn(self) -> int:
        return self.wal.checkpointed_lsn

    def read_from(self, lsn_exclusive: int, max_records: int | None = None) -> Any:
        return self.wal.read_from(lsn_exclusive, max_records)

    def checkpoint(self, lsn: int) -> None:
        if self.crash == "before_checkpoint":
            raise Crash(self.crash)
        self.wal.checkpoint(lsn)


class CrashingAggregator(Aggregator):
    crash: str | None = None

    def _insert_executions(self, session: Session, rows: list[dict[str, Any]]) -> None:
        super()._insert_executions(session, rows)
        if self.crash == "before_commit":
            raise Crash(self.crash)  # the rows were inserted, the transaction never commits


class Pipeline(RuleBasedStateMachine):
    sealer: Sealer

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="fluxrun-stateful-"))
        self.engine = make_engine(f"sqlite:///{self.folder / 'index.db'}")
        migrate(self.engine)
        with Session(self.engine) as session:
            admin.create_workspace(session, "acme")
            self.project = admin.create_project(session, "acme", "shop").id
        self.store = CrashingStore(self.folder / "objects")
        self.acknowledged: dict[str, bytes] = {}
        self.poison: set[str] = set()
        self.wal: WriteAheadLog | None = None
        self._open()

    def _open(self) -> None:
        self.wal = WriteAheadLog(self.folder / "wal", segment_bytes=4096)  # small: records cross segments
        self.wal.open()
        self.log = CrashingLog(self.wal)
        self.aggregator = CrashingAggregator(self.log, self.store, self.engine)

    def _seal(self, status: int = 500) -> tuple[str, bytes]:
        bundle_id = secrets.token_hex(8)
        started = datetime.now(UTC).isoformat()
        summary = {"bundle_id": bundle_id, "started_at": started, "route": "/r", "method": "GET", "status": status}
        summary["fingerprint"] = f"fp-{secrets.randbelow(3)}"
        summary["error"] = {"type": "builtins:KeyError", "message": "'x'"}
        return bundle_id, self.sealer.seal(summary=summary, payload={"format": 1, "events": []}, bundle_id=bundle_id)

    @rule(count=st.integers(1, 6), retry=st.booleans())
    def acknowledge(self, count: int, retry: bool) -> None:
        assert self.wal is not None
        bundles = [self._seal() for _ in range(count)]
        if retry and self.acknowledged:  # a shipper retrying after a lost 202: the same bytes again
            bundle_id = next(iter(self.acknowledged))
            bundles.append((bundle_id, self.acknowledged[bundle_id]))
        self.wal.append([pack_record(self.project, data) for _, data in bundles]).result()
        self.acknowledged.update(bundles)  # only after the fsync: acknowledged

    @rule()
    def acknowledge_poison(self) -> None:
        assert self.wal is not None
        bundle_id, data = self._seal(status=2**64 - 1)  # SQLite's INTEGER cannot hold it
        self.wal.append([pack_record(self.project, data)]).result()
        self.acknowledged[bundle_id] = data
        self.poison.add(bundle_id)

    @rule(crash=st.sampled_from(CRASH_POINTS), batch=st.integers(1, 8))
    def aggregate(self, crash: str, batch: int) -> None:
        self.aggregator.batch = batch
        self.store.crash = self.log.crash = self.aggregator.crash = crash
        try:
            self.aggregator.run_once()
        except Crash:
            self._restart(torn=False)
        finally:
            self.store.crash = self.log.crash = self.aggregator.crash = None

    @rule(torn=st.booleans())
    def restart(self, torn: bool) -> None:
        self._restart(torn)

    def _restart(self, torn: bool) -> None:
        """kill -9: the aggregator's state is gone; the WAL is reopened from its files (and recovers)."""
        assert self.wal is not None
        self.wal.close()
        if torn:  # a group that was being written when the power went: never acknowledged
            newest = sorted((self.folder / "wal").glob("wal-*.log"))[-1]
            with open(newest, "ab") as tail:
                tail.write(b"FW\x01\x01\x00\x00\x10\x00torn")
        self._open()

    def _rows(self) -> list[tuple[Any, ...]]:
        with self.engine.connect() as connection:
            return list(
                connection.execute(
                    text(
                        "SELECT bundle_id, object_key, object_offset, object_length, object_sha256 FROM execution "
                        "ORDER BY bundle_id"
                    )
                )
            )

    @invariant()
    def the_index_points_only_at_stored_acknowledged_payloads(self) -> None:
        rows = self._rows()
        for bundle_id, key, offset, length, sha256 in rows:
            assert bundle_id in self.acknowledged, f"{bundle_id} is indexed but was never acknowledged"
            payload = read_payload(self.store, Placement(bundle_id, key, offset, length, sha256))
            assert payload == self.acknowledged[bundle_id]
        with self.engine.connect() as connection:
            counted = connection.execute(text("SELECT coalesce(sum(count), 0) FROM issue")).scalar_one()
        assert counted == len(rows), "an execution was counted twice (or not at all) in its issue"

    def _drain(self) -> None:
        for _ in range(1000):
            if not self.aggregator.run_once():
                return
        raise AssertionError("the aggregator did not drain the WAL")

    def teardown(self) -> None:
        try:
            if self.wal is not None and self.wal._state == "open":
                self._restart(torn=False)
                self._drain()
                stored = {row[0] for row in self._rows()}
                quarantined = self._quarantined()
                assert not stored & self.poison and quarantined == self.poison
                missing = set(self.acknowledged) - stored - quarantined
                assert not missing, f"{len(missing)} acknowledged bundle(s) were never stored"
                before = (self._rows(), self._issues())
                self._restart(torn=True)
                self._drain()
                assert (self._rows(), self._issues()) == before, "a second recovery changed the index"
                self.the_index_points_only_at_stored_acknowledged_payloads()
        finally:
            if self.wal is not None:
                self.wal.close()
            self.engine.dispose()
            shutil.rmtree(self.folder, ignore_errors=True)

    def _quarantined(self) -> set[str]:
        """Bundle ids in the quarantine whose record bytes the store holds."""
        with self.engine.connect() as connection:
            rows = connection.execute(text("SELECT bundle_id, object_key FROM quarantined_record")).all()
        for bundle_id, key in rows:
            assert self.acknowledged[bundle_id] in self.store.get(key)
        return {bundle_id for bundle_id, _ in rows}

    def _issues(self) -> list[tuple[Any, ...]]:
        with self.engine.connect() as connection:
            return list(connection.execute(text("SELECT fingerprint, count FROM issue ORDER BY fingerprint")))


@pytest.mark.slow
def test_wal_store_index_with_random_crashes(keys) -> None:
    Pipeline.sealer = Sealer(load_capture_key(keys.capture), sdk="tests")
    run_state_machine_as_test(
        Pipeline,
        settings=settings(
            max_examples=25,
            stateful_step_count=25,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
