"""Alerts: a scanner turns index changes into outbox rows, a deliverer sends them by webhook or e-mail.

The scanner reads the index (new issues, issues that turned `regressed` - in CI or by reappearing in
production - and issues whose executions in the last hour pass a spike threshold) and inserts one
`AlertDelivery` per rule and event. Each row has a unique (rule, event key), so scanning twice, or on
several nodes, never makes a second alert; the row is the commitment to deliver. Ingest never waits for
any of this: it runs on its own threads, off the index.

The deliverer claims due rows with a lease (so a crash mid-send means a resend: at-least-once), posts
webhooks with an HMAC-SHA256 signature over the timestamp and body, sends e-mail through the configured
SMTP server, retries with exponential backoff and, after the last attempt, leaves the row `dead`: the
dead-letter list admins read (and can retry) through GraphQL.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import smtplib
import time
from datetime import timedelta
from email.message import EmailMessage
from typing import Any

from sqlalchemy import Engine, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from fluxrun_server.control.egress import post_webhook
from fluxrun_server.control.models import AlertCursor, AlertDelivery, AlertRule
from fluxrun_server.control.settings import ControlSettings
from fluxrun_server.index.models import Execution, Issue, Project, Workspace, utcnow

__all__ = ["Alerts", "sign", "verify"]

log = logging.getLogger("fluxrun_server.alerts")
SIGNATURE_HEADER = "X-FluxRun-Signature"
_NEW_ISSUE_WINDOW = 1000  # ids below the cursor re-scanned, for issues whose transactions committed late


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The `X-FluxRun-Signature` value: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, header: str, body: bytes, *, tolerance_s: int = 300, now: float | None = None) -> bool:
    """What a receiver does: check the HMAC in constant time and refuse stale timestamps (replays)."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, body, timestamp).rpartition("v1=")[2]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def _insert(engine: Engine) -> Any:
    return postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert


def _issue_payload(issue: Issue) -> dict[str, Any]:
    return {
        "id": issue.id,
        "fingerprint": issue.fingerprint,
        "error_type": issue.error_type,
        "message": issue.message,
        "route": issue.route,
        "count": issue.count,
        "status": issue.status,
        "first_seen": issue.first_seen.isoformat(),
        "last_seen": issue.last_seen.isoformat(),
    }


class Alerts:
    def __init__(self, engine: Engine, settings: ControlSettings) -> None:
        self.engine = engine
        self.settings = settings
        self.sent = 0
        self.failed = 0

    # -- scanner ---------------------------------------------------------------------------------------------

    def scan(self) -> int:
        """Turn new events into outbox rows; return how many rows were new."""
        with Session(self.engine) as session:
            rules = session.exec(select(AlertRule).where(col(AlertRule.enabled).is_(True))).all()
            if not rules:
                return 0
            now = utcnow()
            events: list[tuple[AlertRule, str, dict[str, Any]]] = []
            projects = {r.project_id for r in rules}
            names = self._project_names(session, projects)

            new_rules = [r for r in rules if r.kind == "new_issue"]
            cursor = session.get(AlertCursor, "issue") or AlertCursor(name="issue", value=0)
            top = cursor.value
            if new_rules:
                floor = max(0, cursor.value - _NEW_ISSUE_WINDOW, min(r.since_issue_id for r in new_rules))
                issues = session.exec(
                    select(Issue).where(
                        col(Issue.project_id).in_({r.project_id for r in new_rules}), col(Issue.id) > floor
                    )
                ).all()
                for issue in issues:
                    top = max(top, issue.id or 0)
                    for rule in new_rules:
                        if rule.project_id == issue.project_id and (issue.id or 0) > rule.since_issue_id:
                            events.append((rule, f"new_issue:{issue.id}", {"issue": _issue_payload(issue)}))

            regression_rules = [r for r in rules if r.kind == "regression"]
            if regression_rules:
                issues = session.exec(
                    select(Issue).where(
                        col(Issue.project_id).in_({r.project_id for r in regression_rules}),
                        Issue.status == "regressed",
                        col(Issue.status_changed_at) >= now - timedelta(days=1),
                    )
                ).all()
                for issue in issues:
                    changed = issue.status_changed_at
                    assert changed is not None
                    for rule in regression_rules:
                        if rule.project_id == issue.project_id and changed >= rule.created_at:
                            key = f"regression:{issue.id}:{changed.timestamp():.6f}"
                            events.append((rule, key, {"issue": _issue_payload(issue)}))

            hour = now.strftime("%Y-%m-%dT%H")
            for rule in (r for r in rules if r.kind == "spike"):
                counts = session.exec(
                    select(Execution.issue_id, func.count())
                    .where(Execution.project_id == rule.project_id, Execution.started_at >= now - timedelta(hours=1))
                    .group_by(col(Execution.issue_id))
                    .having(func.count() > (rule.threshold or 0))
                ).all()
                for issue_id, count in counts:
                    spiking = session.get(Issue, issue_id) if issue_id is not None else None
                    if spiking is not None:
                        extra = {"issue": _issue_payload(spiking), "executions_last_hour": int(count)}
                        events.append((rule, f"spike:{issue_id}:{hour}", {**extra, "threshold": rule.threshold}))

            created = 0
            for rule, key, data in events:
                payload = {
                    "event": rule.kind,
                    "rule_id": rule.id,
                    "project": {"id": rule.project_id, "name": names.get(rule.project_id)},
                    "occurred_at": now.isoformat(),
                    **data,
                }
                result = session.execute(
                    _insert(self.engine)(AlertDelivery)
                    .values(
                        rule_id=rule.id,
                        project_id=rule.project_id,
                        event_key=key,
                        payload=payload,
                        status="pending",
                        attempts=0,
                        next_attempt_at=now,
                        created_at=now,
                    )
                    .on_conflict_do_nothing(index_elements=["rule_id", "event_key"])
                )
                created += max(0, getattr(result, "rowcount", 0) or 0)
            if top > cursor.value:
                cursor.value = top
                session.add(cursor)
            session.commit()
            return created

    @staticmethod
    def _project_names(session: Session, ids: set[int]) -> dict[int, str]:
        rows = session.exec(
            select(Project.id, Project.name, Workspace.name)
            .join(Workspace, col(Workspace.id) == Project.workspace_id)
            .where(col(Project.id).in_(ids))
        ).all()
        return {int(pid or 0): f"{ws}/{name}" for pid, name, ws in rows}

    # -- deliverer -------------------------------------------------------------------------------------------

    def deliver(self, limit: int = 20) -> int:
        """Send due deliveries; return how many were attempted."""
        claimed = self._claim(limit)
        for delivery_id, rule, payload, attempts in claimed:
            error = self._send(rule, delivery_id, payload) if rule is not None else "its alert rule no longer exists"
            self._finish(delivery_id, attempts + 1, error, permanent=rule is None or error == _NO_SMTP)
        return len(claimed)

    def _claim(self, limit: int) -> list[tuple[int, AlertRule | None, dict[str, Any], int]]:
        now = utcnow()
        with Session(self.engine, expire_on_commit=False) as session:
            query = (
                select(AlertDelivery)
                .where(AlertDelivery.status == "pending", col(AlertDelivery.next_attempt_at) <= now)
                .order_by(col(AlertDelivery.next_attempt_at))
                .limit(limit)
            )
            if self.engine.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = session.exec(query).all()
            out = []
            for row in rows:
                # the lease: if this process dies mid-send, another pass sends the row again after it runs out
                row.next_attempt_at = now + timedelta(seconds=3 * self.settings.webhook_timeout_s + 5)
                session.add(row)
                out.append((row.id or 0, session.get(AlertRule, row.rule_id), dict(row.payload), row.attempts))
            session.commit()
            return out

    def _finish(self, delivery_id: int, attempts: int, error: str | None, *, permanent: bool) -> None:
        with Session(self.engine) as session:
            row = session.get(AlertDelivery, delivery_id)
            if row is None:
                return
            row.attempts = attempts
            if error is None:
                row.status, row.delivered_at, row.last_error = "delivered", utcnow(), None
                self.sent += 1
            else:
                self.failed += 1
                row.last_error = error[:2000]
                if permanent or attempts >= self.settings.alert_max_attempts:
                    row.status = "dead"
                    log.warning("alert delivery %s is dead after %d attempts: %s", delivery_id, attempts, error)
                else:
                    delay = min(self.settings.alert_retry_max_s, self.settings.alert_retry_base_s * 2 ** (attempts - 1))
                    row.next_attempt_at = utcnow() + timedelta(seconds=delay * random.uniform(0.9, 1.1))
            session.add(row)
            session.commit()

    def _send(self, rule: AlertRule, delivery_id: int, payload: dict[str, Any]) -> str | None:
        try:
            if rule.channel == "webhook":
                return self._webhook(rule, delivery_id, payload)
            return self._email(rule, delivery_id, payload)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"

    def _webhook(self, rule: AlertRule, delivery_id: int, payload: dict[str, Any]) -> str | None:
        body = json.dumps({"delivery_id": delivery_id, **payload}, sort_keys=True).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "FluxRun-Alerts/1",
            "X-FluxRun-Event": str(payload.get("event")),
            "X-FluxRun-Delivery": str(delivery_id),
            SIGNATURE_HEADER: sign(rule.secret or "", body, int(time.time())),
        }
        # the target is resolved and checked again now, and the POST goes to a checked address (egress.py)
        answer = post_webhook(
            rule.target,
            body,
            headers,
            timeout=self.settings.webhook_timeout_s,
            allow_private=self.settings.webhook_allow_private,
        )
        if 200 <= answer.status < 300:
            return None
        return f"HTTP {answer.status} from {rule.target}: {answer.text[:200]}"

    def _email(self, rule: AlertRule, delivery_id: int, payload: dict[str, Any]) -> str | None:
        settings = self.settings
        if not settings.smtp_host:
            return _NO_SMTP
        issue = payload.get("issue") or {}
        what = {"new_issue": "New issue", "regression": "Regression", "spike": "Spike"}.get(
            str(payload.get("event")), "Alert"
        )
        project = (payload.get("project") or {}).get("name")
        message = EmailMessage()
        message["Subject"] = f"[FluxRun] {what} in {project}: {issue.get('error_type')} {issue.get('message') or ''}"
        message["From"] = settings.smtp_from
        message["To"] = rule.target
        message["X-FluxRun-Delivery"] = str(delivery_id)
        lines = [
            f"{what} in {project}",
            f"issue {issue.get('id')}: {issue.get('error_type')} {issue.get('message') or ''}",
            f"route: {issue.get('route')}  count: {issue.get('count')}  status: {issue.get('status')}",
        ]
        if payload.get("event") == "spike":
            lines.append(
                f"{payload.get('executions_last_hour')} executions in the last hour "
                f"(threshold {payload.get('threshold')})"
            )
        message.set_content("\n".join([*lines, "", json.dumps(payload, indent=2, sort_keys=True)]))
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.webhook_timeout_s) as smtp:
            if settings.smtp_starttls:
                smtp.starttls()
            if settings.smtp_user and settings.smtp_password:
                smtp.login(settings.smtp_user, settings.smtp_password)
            smtp.send_message(message)
        return None


_NO_SMTP = "no SMTP server is configured: set FLUXRUN_CONTROL_SMTP_HOST (and _PORT) for e-mail alerts"
