"""The control plane inside one server process: the ingest gate, and its background threads (usage flush,
alert scan and delivery, retention), each on its own period, none of them on ingest's path."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from fluxrun_server.control.alerts import Alerts
from fluxrun_server.control.retention import Retention
from fluxrun_server.control.settings import ControlSettings
from fluxrun_server.control.usage import Gate
from fluxrun_server.storage.base import ObjectStore

__all__ = ["ControlPlane", "IngestGate"]

log = logging.getLogger("fluxrun_server.control")


class ControlPlane:
    def __init__(self, engine: Engine, store: ObjectStore, settings: ControlSettings | None = None) -> None:
        self.settings = settings or ControlSettings()
        self.gate = Gate(engine, self.settings)
        self.alerts = Alerts(engine, self.settings)
        self.retention = Retention(engine, store, self.gate, self.settings.retention_batch)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.errors: dict[str, str] = {}

    def start(self) -> None:
        self.gate.flush()  # plans and today's usage before the first request, so quotas hold from the start
        s = self.settings
        jobs: list[tuple[str, float, Callable[[], Any]]] = [
            ("usage", s.usage_flush_interval_s, self.gate.flush),
            ("alert-scan", s.alert_scan_interval_s, self.alerts.scan),
            ("alert-deliver", min(0.5, s.alert_retry_base_s / 2), self.alerts.deliver),
            ("retention", s.retention_interval_s, self.retention.run),
        ]
        for name, period, job in jobs:
            thread = threading.Thread(target=self._loop, args=(name, period, job), name=f"fluxrun-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        try:
            self.gate.flush()  # the last counts
        except Exception:
            log.exception("could not write the last usage counters")

    def _loop(self, name: str, period: float, job: Callable[[], Any]) -> None:
        """Run `job` every `period` seconds. A failure is logged once, when the job starts failing (a database
        outage in one line, anything else with its traceback), and again when it recovers: not every period."""
        while not self._stop.wait(period):
            try:
                job()
            except Exception as exc:  # keep going; the work is retried next period
                failing = name in self.errors
                self.errors[name] = f"{type(exc).__name__}: {exc}"
                if failing:
                    continue
                if isinstance(exc, OperationalError | InterfaceError):
                    log.error("control-plane job %s: the database is unavailable; retrying every %.1f s", name, period)
                else:
                    log.exception("control-plane job %s failed; retrying every %.1f s", name, period)
            else:
                if self.errors.pop(name, None) is not None:
                    log.warning("control-plane job %s recovered", name)


async def get_gate(request: Request) -> Gate:
    control: ControlPlane = request.app.state.control
    return control.gate


IngestGate = Annotated[Gate, Depends(get_gate)]
