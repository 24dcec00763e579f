"""Scale-out nodes: `fluxrun server aggregate` (an aggregator alone, on the distributed log), and what an
edge node holds in place of its own aggregator process when the log is distributed.

An aggregator node is the unchanged `Aggregator` reading a `JetStreamRecordLog`: a pass fetches up to
`FLUXRUN_SERVER_AGGREGATE_BATCH` messages from the shared durable consumer, writes their payloads as one
segment object (many bundles per object), indexes the summaries in one transaction (a bundle id already
indexed is skipped) and only then acknowledges the messages. Any number of these run side by side; a
killed one's messages go to the others after the ack wait.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

from fluxrun_server.ingest.log_nats import JetStreamEdge
from fluxrun_server.settings import ServerSettings

__all__ = ["RemoteAggregators", "open_distributed_log", "run_aggregator_node"]

log = logging.getLogger("fluxrun_server.aggregator")

DEFAULT_ACK_WAIT_S = 30.0


class RemoteAggregators:
    """An edge node's view of aggregation when it runs in other processes (`fluxrun server aggregate`)."""

    pid: int | None = None
    stored = 0
    duplicates = 0

    def __init__(self, edge: JetStreamEdge) -> None:
        self._edge = edge

    @property
    def ready(self) -> bool:
        """An aggregator is attached to the shared consumer (as of the last second's look)."""
        return self._edge.aggregators_attached

    @property
    def last_error(self) -> None:
        """None: aggregators being away does not stop this node acknowledging bundles durably (the stream keeps
        them), so it must not mark the node unhealthy and pull every edge out of the load balancer at once.
        Monitor `aggregator.running` and the backlog instead (docs/deploy.md)."""
        return None

    def start(self) -> None:
        """Nothing to start here: aggregators are processes of their own."""

    def stop(self, timeout: float = 30.0) -> None:
        """Nothing to stop here."""

    def wake(self) -> None:
        """Aggregators wait on their pull requests, which JetStream answers as messages arrive."""


def open_distributed_log(settings: ServerSettings) -> tuple[JetStreamEdge, RemoteAggregators]:
    edge = JetStreamEdge(settings)
    return edge, RemoteAggregators(edge)


def run_aggregator_node(
    settings: ServerSettings,
    *,
    ack_wait_s: float = DEFAULT_ACK_WAIT_S,
    on_ready: Callable[[], None] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Run one aggregator against the distributed log until SIGTERM/SIGINT (or `stop`); the exit code."""
    from fluxrun_server.index.database import make_engine, migrate
    from fluxrun_server.ingest.aggregator import Aggregator
    from fluxrun_server.ingest.log_nats import JetStreamRecordLog
    from fluxrun_server.storage.factory import open_store

    if not settings.log_url:
        raise ValueError(
            "`fluxrun server aggregate` runs against a distributed log: set FLUXRUN_SERVER_LOG_URL=nats://... "
            "(the embedded server aggregates its own WAL)"
        )
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    store = open_store(
        settings.resolved_object_store_url,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
    )
    records = JetStreamRecordLog(settings, ack_wait_s=ack_wait_s)
    aggregator = Aggregator(
        records,
        store,
        engine,
        batch=settings.aggregate_batch,
        interval_s=settings.aggregate_interval_s,
        segment_target_bytes=settings.segment_target_bytes,
    )

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        aggregator.request_stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    if stop is not None:

        def watch(event: threading.Event) -> None:
            event.wait()
            aggregator.request_stop()

        threading.Thread(target=watch, args=(stop,), daemon=True).start()
    if on_ready is not None:
        on_ready()
    try:
        aggregator.run()  # ends after the pass in hand: its messages are acknowledged, or left for redelivery
    finally:
        records.close()
        engine.dispose()
    log.info("aggregator stopped: %d stored, %d duplicates", aggregator.stored, aggregator.duplicates)
    return 0
