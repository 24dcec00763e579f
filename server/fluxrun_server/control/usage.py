"""Ingest's gate: per-project token buckets, daily quotas and usage counters, all in memory on the hot path.

`admit()` runs before the body is read and refuses a project that is over its rate or has spent its daily
quota (429, a clear reason, Retry-After); `charge()` runs after the bundles are verified, trims a batch to
what the quota and the plan's payload limit allow, and counts accepted bundles, bytes and rejections by
reason. Neither touches the database: a background thread (`flush`) writes the counters in one transaction
per interval, reads back today's totals (so quotas hold across ingest nodes, within one interval) and
reloads the projects' plans.

Rate limits are per project, so one project flooding the server gets cheap 429s before its bodies are read,
while the others keep their share.

On PostgreSQL (where several nodes share one index) a daily quota is exact across nodes: `charge()` reserves the
batch's bundles in the `accepted` counter itself, in one short transaction that locks the project's row for the
day, granting at most what is left; the flush then leaves `accepted` alone. A quota is never overrun however
many nodes take requests, and the UTC day of the reservation is the day it counts against. Projects without a
quota, and SQLite, keep the in-memory path.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from fastapi import HTTPException
from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from fluxrun_server.control.models import Plan, ProjectPlan, UsageCounter
from fluxrun_server.control.settings import ControlSettings

__all__ = ["Gate", "Limits", "bump"]


@dataclass(frozen=True, slots=True)
class Limits:
    plan: str | None = None
    bundles_per_day: int | None = None
    max_payload_bytes: int | None = None
    rate_per_second: float | None = None
    burst: float | None = None


@dataclass(frozen=True, slots=True)
class Charge:
    """What `Gate.charge` counted for a batch's kept bundles, so a batch that is then not stored is refunded."""

    project_id: int
    day: date
    bundles: int
    size: int
    reserved: bool  # taken from the database's counter (exact quotas), not only counted here


class _Bucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst, self.tokens, self.stamp = rate, burst, burst, time.monotonic()

    def refill(self, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        return self.tokens


def _today() -> date:
    return datetime.now(UTC).date()


def _seconds_to_midnight() -> int:
    now = datetime.now(UTC)
    tomorrow = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    return max(1, int((tomorrow - now).total_seconds()) + 1)


def _insert(engine: Engine) -> Any:
    return postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert


def bump(session: Session, engine: Engine, counts: dict[tuple[int, date, str], int]) -> None:
    """Add to usage counters (insert or increment), sorted so concurrent writers lock rows in one order."""
    for (project_id, day, metric), value in sorted(counts.items()):
        if not value:
            continue
        stmt = _insert(engine)(UsageCounter).values(project_id=project_id, day=day, metric=metric, value=value)
        stmt = stmt.on_conflict_do_update(
            index_elements=["project_id", "day", "metric"], set_={"value": UsageCounter.value + stmt.excluded.value}
        )
        session.execute(stmt)


def _accepted_row(project_id: int, day: date) -> tuple[Any, Any]:
    """The usage table and the condition that picks a project's "accepted" counter for a day."""
    table = UsageCounter.__table__  # type: ignore[attr-defined]
    return table, (table.c.project_id == project_id) & (table.c.day == day) & (table.c.metric == "accepted")


class Gate:
    def __init__(self, engine: Engine, settings: ControlSettings) -> None:
        self.engine = engine
        self.settings = settings
        self._lock = threading.Lock()
        self._limits: dict[int, Limits] = {}
        self._buckets: dict[int, _Bucket] = {}
        self._pending: dict[tuple[int, date, str], int] = defaultdict(int)
        self._inflight: dict[tuple[int, date, str], int] = {}
        self._stored_today: dict[int, int] = {}  # accepted today, as last read from the database
        self._day = _today()
        self.flush_errors = 0
        self.exact_quotas = engine.dialect.name == "postgresql"  # shared by nodes: reserve in the database

    # -- hot path ------------------------------------------------------------------------------------------

    def limits(self, project_id: int) -> Limits:
        found = self._limits.get(project_id)
        if found is not None:
            return found
        rate = self.settings.default_rate_per_second
        return Limits(rate_per_second=rate, burst=self.settings.default_burst or (2 * rate if rate else None))

    def _accepted_today(self, project_id: int, day: date) -> int:
        key = (project_id, day, "accepted")
        return self._stored_today.get(project_id, 0) + self._inflight.get(key, 0) + self._pending.get(key, 0)

    def admit(self, project_id: int) -> None:
        """Refuse (429) before the body is read if the project is over its rate or has spent today's quota."""
        limits = self.limits(project_id)
        day = _today()
        with self._lock:
            if limits.bundles_per_day is not None and self._accepted_today(project_id, day) >= limits.bundles_per_day:
                self._pending[(project_id, day, "rejected:quota_exceeded")] += 1
                raise HTTPException(
                    429,
                    f"quota_exceeded: this project has used its daily quota of {limits.bundles_per_day} bundles "
                    f"(plan {limits.plan!r}); it resets at 00:00 UTC. Ask the workspace owner for a larger plan",
                    headers={"Retry-After": str(_seconds_to_midnight())},
                )
            if limits.rate_per_second:
                bucket = self._bucket(project_id, limits)
                if bucket.refill(time.monotonic()) < 1:
                    self._pending[(project_id, day, "rejected:rate_limited")] += 1
                    wait = max(1, int((1 - bucket.tokens) / bucket.rate) + 1)
                    raise HTTPException(
                        429,
                        f"rate_limited: this project sends more than {limits.rate_per_second:g} bundles per second "
                        f"(plan {limits.plan!r}); slow down and retry after {wait} s",
                        headers={"Retry-After": str(wait)},
                    )

    def _bucket(self, project_id: int, limits: Limits) -> _Bucket:
        bucket = self._buckets.get(project_id)
        rate = limits.rate_per_second or 0.0
        burst = limits.burst or 2 * rate
        if bucket is None or bucket.rate != rate or bucket.burst != burst:
            bucket = self._buckets[project_id] = _Bucket(rate, max(burst, 1.0))
        return bucket

    def reserves(self, project_id: int) -> bool:
        """Whether `charge` takes this project's bundles from the database's counter (a round trip)."""
        return self.exact_quotas and self.limits(project_id).bundles_per_day is not None

    def charge(
        self, project_id: int, accepted: list[str], records: list[bytes], rejected: list[dict[str, Any]]
    ) -> Charge:
        """Trim `accepted`/`records` (in place) to the quota and payload limit, count everything, take tokens.
        The receipt lets `refund` give the kept bundles back if they are then not stored."""
        limits = self.limits(project_id)
        day = _today()
        bundles = len(accepted) + len(rejected)
        with self._lock:
            room = (
                None
                if limits.bundles_per_day is None
                else max(0, limits.bundles_per_day - self._accepted_today(project_id, day))
            )
            keep_ids: list[str] = []
            keep_records: list[bytes] = []
            size = 0
            for bundle_id, record in zip(accepted, records, strict=True):
                if limits.max_payload_bytes is not None and len(record) > limits.max_payload_bytes:
                    reason, message = "payload_too_large", f"over the plan's {limits.max_payload_bytes} byte limit"
                elif room is not None and len(keep_ids) >= room:
                    reason, message = "quota_exceeded", f"the daily quota of {limits.bundles_per_day} bundles is spent"
                else:
                    keep_ids.append(bundle_id)
                    keep_records.append(record)
                    size += len(record)
                    continue
                rejected.append({"index": None, "bundle_id": bundle_id, "reason": reason, "message": message})
            reserve = self.exact_quotas and limits.bundles_per_day is not None and bool(keep_ids)
        if reserve:
            assert limits.bundles_per_day is not None
            granted, total = self._reserve(project_id, day, len(keep_ids), limits.bundles_per_day)
            for bundle_id, record in zip(keep_ids[granted:], keep_records[granted:], strict=True):
                size -= len(record)
                message = f"the daily quota of {limits.bundles_per_day} bundles is spent"
                rejected.append({"index": None, "bundle_id": bundle_id, "reason": "quota_exceeded", "message": message})
            del keep_ids[granted:], keep_records[granted:]
        with self._lock:
            if reserve:
                self._stored_today[project_id] = max(self._stored_today.get(project_id, 0), total)
            for item in rejected:
                self._pending[(project_id, day, f"rejected:{item['reason']}")] += 1
            if keep_ids:
                if not reserve:  # a reservation already counted them
                    self._pending[(project_id, day, "accepted")] += len(keep_ids)
                self._pending[(project_id, day, "bytes")] += size
            if limits.rate_per_second:
                bucket = self._bucket(project_id, limits)
                bucket.refill(time.monotonic())
                # Concurrent requests are admitted on one token and charged here for their whole batch: the debt
                # (negative tokens) keeps the long-run rate exact; it is capped at a minute's worth.
                bucket.tokens = max(-60 * bucket.rate, bucket.tokens - bundles)
        accepted[:] = keep_ids
        records[:] = keep_records
        return Charge(project_id, day, len(keep_ids), size, reserve)

    def refund(self, charge: Charge) -> None:
        """Give back what `charge` counted for bundles that were answered 503 and not stored: the sender sends
        them again, and a retry must not spend the quota twice."""
        if not charge.bundles:
            return
        with self._lock:
            self._pending[(charge.project_id, charge.day, "bytes")] -= charge.size
            if not charge.reserved:
                self._pending[(charge.project_id, charge.day, "accepted")] -= charge.bundles
                return
            stored = self._stored_today.get(charge.project_id, 0)
            self._stored_today[charge.project_id] = max(0, stored - charge.bundles)
        table, key = _accepted_row(charge.project_id, charge.day)
        with self.engine.begin() as connection:
            connection.execute(table.update().where(key).values(value=table.c.value - charge.bundles))

    def _reserve(self, project_id: int, day: date, wanted: int, quota: int) -> tuple[int, int]:
        """Take up to `wanted` of today's quota in the database: (granted, accepted today including them)."""
        table, key = _accepted_row(project_id, day)
        with self.engine.begin() as connection:
            connection.execute(
                postgresql.insert(table)
                .values(project_id=project_id, day=day, metric="accepted", value=0)
                .on_conflict_do_nothing(index_elements=["project_id", "day", "metric"])
            )
            used = int(connection.execute(select(table.c.value).where(key).with_for_update()).scalar_one())
            granted = max(0, min(wanted, quota - used))
            if granted:
                connection.execute(table.update().where(key).values(value=table.c.value + granted))
        return granted, used + granted

    # -- background ------------------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write pending counters, read back today's totals, reload plans. Called by the control plane's thread."""
        with self._lock:
            snapshot = dict(self._pending)
            self._pending.clear()
            for key, value in snapshot.items():
                self._inflight[key] = self._inflight.get(key, 0) + value
        day = _today()
        try:
            with Session(self.engine) as session:
                bump(session, self.engine, snapshot)
                session.commit()
                totals = dict(
                    session.exec(
                        select(UsageCounter.project_id, UsageCounter.value).where(
                            UsageCounter.day == day, UsageCounter.metric == "accepted"
                        )
                    ).all()
                )
                plans = session.exec(
                    select(ProjectPlan.project_id, Plan).join(Plan, col(Plan.id) == ProjectPlan.plan_id)
                ).all()
        except Exception:
            with self._lock:  # keep the counts for the next flush
                for key, value in snapshot.items():
                    self._pending[key] += value
                    self._inflight[key] -= value
            self.flush_errors += 1
            raise
        limits = {
            project_id: Limits(
                plan=plan.name,
                bundles_per_day=plan.bundles_per_day,
                max_payload_bytes=plan.max_payload_bytes,
                rate_per_second=plan.rate_per_second or self.settings.default_rate_per_second,
                burst=plan.burst or self.settings.default_burst,
            )
            for project_id, plan in plans
        }
        with self._lock:
            for key, value in snapshot.items():
                left = self._inflight.get(key, 0) - value
                if left:
                    self._inflight[key] = left
                else:
                    self._inflight.pop(key, None)
            self._stored_today = {int(k): int(v) for k, v in totals.items()}
            self._limits = limits
            self._day = day

    def note(self, project_id: int, metric: str, value: int) -> None:
        """Count something outside ingest (the retention job's deletions) with the same batching."""
        with self._lock:
            self._pending[(project_id, _today(), metric)] += value
