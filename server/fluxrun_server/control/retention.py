"""Retention: delete executions (index rows), their regression runs and emptied issues past a plan's
retention, then the payload segments no execution points at any more; count what went in usage.

A segment holds the payloads of every project the aggregator stored in one batch, so it is deleted once
none of its bundles is left in the index (a neighbour with a longer retention keeps it alive until then).
Deletion goes oldest first in batches; each batch is one transaction, so a crash leaves nothing half done,
and a segment object whose rows are gone but which was not yet deleted is found again on the next run.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import Engine, delete, func
from sqlmodel import Session, col, select

from fluxrun_server.control.models import Plan, ProjectPlan
from fluxrun_server.control.usage import Gate
from fluxrun_server.index.models import Execution, Issue, RegressionRun, utcnow
from fluxrun_server.storage.base import ObjectStore

__all__ = ["Retention", "RetentionReport"]

log = logging.getLogger("fluxrun_server.retention")


@dataclass
class RetentionReport:
    executions: int = 0
    bytes: int = 0
    issues: int = 0
    objects: int = 0
    per_project: dict[int, int] = field(default_factory=dict)


class Retention:
    def __init__(self, engine: Engine, store: ObjectStore, gate: Gate, batch: int = 1000) -> None:
        self.engine = engine
        self.store = store
        self.gate = gate
        self.batch = batch
        self.last: RetentionReport | None = None

    def run(self) -> RetentionReport:
        report = RetentionReport()
        with Session(self.engine) as session:
            plans = session.exec(
                select(ProjectPlan.project_id, Plan.retention_days)
                .join(Plan, col(Plan.id) == ProjectPlan.plan_id)
                .where(col(Plan.retention_days).is_not(None))
            ).all()
        keys: set[str] = set()
        for project_id, days in plans:
            assert days is not None
            cutoff = utcnow() - timedelta(days=days)
            keys |= self._project(project_id, cutoff, report)
        report.objects = self._drop_objects(keys)
        self.last = report
        if report.executions:
            log.info(
                "retention: deleted %d executions (%d bytes), %d issues, %d segment objects",
                report.executions,
                report.bytes,
                report.issues,
                report.objects,
            )
        return report

    def _project(self, project_id: int, cutoff: object, report: RetentionReport) -> set[str]:
        keys: set[str] = set()
        deleted = 0
        size = 0
        while True:
            with Session(self.engine) as session:
                rows = session.exec(
                    select(Execution.bundle_id, Execution.object_key, Execution.object_length)
                    .where(Execution.project_id == project_id, col(Execution.started_at) < cutoff)
                    .order_by(col(Execution.started_at))
                    .limit(self.batch)
                ).all()
                if not rows:
                    break
                ids = [r[0] for r in rows]
                # ids are unique within a project only: another project's run with one of these ids stays
                session.execute(
                    delete(RegressionRun).where(
                        col(RegressionRun.project_id) == project_id, col(RegressionRun.bundle_id).in_(ids)
                    )
                )
                session.execute(
                    delete(Execution).where(col(Execution.project_id) == project_id, col(Execution.bundle_id).in_(ids))
                )
                session.commit()
            keys |= {r[1] for r in rows}
            deleted += len(rows)
            size += sum(int(r[2]) for r in rows)
        with Session(self.engine) as session:
            empty = select(Issue.id).where(
                Issue.project_id == project_id,
                col(Issue.last_seen) < cutoff,
                ~select(Execution.bundle_id).where(Execution.issue_id == Issue.id).exists(),
            )
            stale = [i for i in session.exec(empty).all() if i is not None]
            if stale:
                session.execute(delete(RegressionRun).where(col(RegressionRun.issue_id).in_(stale)))
                session.execute(delete(Issue).where(col(Issue.id).in_(stale)))
            session.commit()
        if deleted:
            self.gate.note(project_id, "deleted", deleted)
            self.gate.note(project_id, "deleted_bytes", size)
        report.executions += deleted
        report.bytes += size
        report.issues += len(stale)
        report.per_project[project_id] = deleted
        return keys

    def _drop_objects(self, keys: set[str]) -> int:
        if not keys:
            return 0
        counts: dict[str, int] = defaultdict(int)
        with Session(self.engine) as session:
            for key, count in session.exec(
                select(Execution.object_key, func.count())
                .where(col(Execution.object_key).in_(sorted(keys)))
                .group_by(Execution.object_key)
            ).all():
                counts[key] = int(count)
        dropped = 0
        for key in sorted(keys):
            if counts.get(key, 0) == 0:
                self.store.delete(key)
                dropped += 1
        return dropped
