"""The distributed log on NATS JetStream (nats-py): the edge's publisher and the aggregators' consumer.

One stream (`FLUXRUN_SERVER_LOG_STREAM`, default FLUXRUN_BUNDLES) on subjects `fluxrun.<stream>.<project_id>`:
file storage, `FLUXRUN_SERVER_LOG_REPLICAS` replicas (3 in a cluster), work-queue retention (a message is
deleted once an aggregator acknowledges it), new messages refused once the backlog reaches its byte cap, and
a duplicate window. What an acknowledged publish guarantees is in docs/deploy.md: in an R3 cluster a quorum
of two servers holds it; a single server holds it in its file store, which survives the server process being
killed but, on nats-server 2.9, is synced to disk on a timer rather than per message.

Edge: `JetStreamEdge.append_async` publishes each record with `Nats-Msg-Id` = project and bundle id and
returns once JetStream acknowledged every one (the 202 waits for that). Aggregators: `JetStreamRecordLog`
is the `RecordLog` the unchanged `Aggregator` reads, backed by one durable pull consumer that every
aggregator process shares; `checkpoint` acknowledges a pass's messages after their payloads are in the
object store and their summaries in the index. Messages of an aggregator that dies are redelivered to
another after the ack wait; held messages are kept alive (`in_progress`) while a pass runs.

nats-py is asyncio; both classes run one client on an event loop of their own thread (`_LoopThread`), so
they serve the server's loop, the aggregator's plain thread and a synchronous start-up alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Coroutine, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NotFoundError

from fluxrun_server.ingest.log import message_id, parse_log_url
from fluxrun_server.ingest.wal import WALError, WALFullError
from fluxrun_server.settings import ServerSettings

__all__ = [
    "CONSUMER",
    "JetStreamEdge",
    "JetStreamRecordLog",
    "LogSetupError",
    "LogUnavailableError",
    "connect_options",
    "ensure_stream",
]

log = logging.getLogger("fluxrun_server.log")

CONSUMER = "fluxrun-aggregators"  # the one durable pull consumer every aggregator shares
ACK_TIMEOUT_S = 5.0  # a publish JetStream has not acknowledged by then is answered 503 (the shipper retries)
CONNECT_TIMEOUT_S = 5.0
STREAM_SETUP_S = 30.0  # how long a node waits for a just-started cluster to create or confirm the stream
DUPLICATE_WINDOW_S = 120.0
MAX_ACK_PENDING = 50_000  # messages handed to aggregators and not yet acknowledged, all of them together
STATS_EVERY_S = 1.0
_STREAM_MAX_BYTES_FACTOR = 2  # the stream refuses new messages at twice the backlog where the edge answers 429
T = TypeVar("T")


class LogUnavailableError(WALError):
    """JetStream did not acknowledge a publish (no quorum, node lost, timeout): nothing is promised; retry."""


class LogFullError(WALFullError):
    """The stream is at its byte cap: the aggregators are far behind."""


class LogSetupError(RuntimeError):
    """The log could not be reached or the stream could not be created; the message says what to change."""


def subject_prefix(settings: ServerSettings) -> str:
    return f"fluxrun.{settings.log_stream}"


def connect_options(settings: ServerSettings, name: str) -> dict[str, Any]:
    assert settings.log_url is not None
    return {
        "servers": parse_log_url(settings.log_url),
        "name": name,
        "connect_timeout": 2,
        "reconnect_time_wait": 0.25,
        "max_reconnect_attempts": -1,  # a node of the cluster going away is routine: keep trying the others
        "allow_reconnect": True,
        "ping_interval": 5,
        "max_outstanding_pings": 2,
    }


async def ensure_stream(js: JetStreamContext, settings: ServerSettings) -> None:
    """Create the stream, or bring an existing one to these settings (replicas, limits)."""
    config = api.StreamConfig(
        name=settings.log_stream,
        subjects=[f"{subject_prefix(settings)}.*"],
        retention=api.RetentionPolicy.WORK_QUEUE,
        storage=api.StorageType.FILE,
        num_replicas=settings.log_replicas,
        duplicate_window=DUPLICATE_WINDOW_S,
        max_msg_size=settings.max_bundle_bytes + 4,
        max_bytes=_STREAM_MAX_BYTES_FACTOR * settings.wal_backlog_bytes,
        discard=api.DiscardPolicy.NEW,
    )
    deadline = time.monotonic() + STREAM_SETUP_S
    while True:
        try:
            await _create_or_update(js, config)
            return
        except (TimeoutError, nats.errors.TimeoutError, nats.errors.NoRespondersError, _NotReady) as exc:
            # A cluster that has just started has no JetStream leader yet, and nodes starting side by side
            # race to create the stream: ask again until it answers.
            if time.monotonic() > deadline:
                raise LogSetupError(
                    f"JetStream did not set up stream {settings.log_stream} within {STREAM_SETUP_S:g} s "
                    f"({type(exc).__name__}{': ' + str(exc) if str(exc) else ''}); is the NATS cluster up, with "
                    f"JetStream enabled on at least {settings.log_replicas} server(s)?"
                ) from None
            await asyncio.sleep(0.5)


class _NotReady(Exception):
    """JetStream answered that it cannot serve the request yet (no leader, or the stream is being created)."""


_NOT_READY_CODES = {10008, 10058}  # JetStream temporarily unavailable; stream name already in use (a racing node)


def _not_ready(exc: APIError) -> bool:
    return exc.err_code in _NOT_READY_CODES or exc.code == 503


async def _create_or_update(js: JetStreamContext, config: api.StreamConfig) -> None:
    name = config.name or ""
    try:
        await js.stream_info(name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except APIError as exc:
            if _not_ready(exc):
                raise _NotReady(exc.description) from None
            raise LogSetupError(
                f"could not create JetStream stream {name} with {config.num_replicas} replica(s): "
                f"{exc.description}. A single NATS server needs FLUXRUN_SERVER_LOG_REPLICAS=1, and nats-server must "
                "run with JetStream enabled (-js)"
            ) from None
    except APIError as exc:
        if _not_ready(exc):
            raise _NotReady(exc.description) from None
        raise
    try:
        await js.update_stream(config)
    except APIError as exc:
        if _not_ready(exc):
            raise _NotReady(exc.description) from None
        raise LogSetupError(
            f"JetStream stream {name} exists but cannot take these settings: {exc.description}"
        ) from None


class _LoopThread:
    """An asyncio loop on a daemon thread, for a nats-py client that synchronous code and other loops share."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self.submit(coro).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


async def _connect(settings: ServerSettings, name: str, errors: list[BaseException]) -> Client:
    async def on_error(exc: Exception) -> None:
        if not errors or str(errors[0]) != str(exc):  # once per different error, not once per reconnect attempt
            log.warning("NATS: %s", exc)
        errors[:] = [exc]

    async def on_reconnect() -> None:
        log.warning("NATS: reconnected")

    options = connect_options(settings, name)
    connect = nats.connect(**options, error_cb=on_error, reconnected_cb=on_reconnect)
    try:  # nats-py retries a first connection as it retries a lost one: bound the wait at start-up
        return await asyncio.wait_for(connect, CONNECT_TIMEOUT_S)
    except Exception as exc:
        hosts = ", ".join(s.rpartition("@")[2] for s in options["servers"])
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else f"no answer within {CONNECT_TIMEOUT_S:g} s"
        last = f" ({errors[0]})" if errors else ""
        raise LogSetupError(f"could not connect to NATS at {hosts}: {reason}{last}") from None


class JetStreamEdge:
    """The edge's log: publish, and resolve only once JetStream acknowledged every record (the 202 waits)."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self._prefix = subject_prefix(settings) + "."
        self._errors: list[BaseException] = []
        self._backlog_bytes = 0
        self._backlog_records = 0
        self._consumers_seen = False
        self._stopping = False
        self._loop = _LoopThread("fluxrun-nats-edge")
        try:
            self._nc: Client = self._loop.run(_connect(settings, "fluxrun-edge", self._errors), CONNECT_TIMEOUT_S * 2)
            self._js = self._nc.jetstream(timeout=ACK_TIMEOUT_S)
            self._loop.run(ensure_stream(self._js, settings), STREAM_SETUP_S + CONNECT_TIMEOUT_S)
        except BaseException:
            self._loop.stop()
            raise
        self._stats = self._loop.submit(self._watch())

    # -- EdgeLog ---------------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return bool(self._nc.is_connected)

    @property
    def last_error(self) -> BaseException | None:
        return None if self._nc.is_connected else (self._errors[0] if self._errors else None)

    @property
    def backlog_bytes(self) -> int:
        """Bytes in the stream not yet acknowledged by an aggregator (work-queue retention), as of <= 1 s ago."""
        return self._backlog_bytes

    @property
    def backlog_records(self) -> int:
        return self._backlog_records

    @property
    def aggregators_attached(self) -> bool:
        """The shared consumer had a pull waiting or messages in hand at the last look: someone aggregates."""
        return self._consumers_seen

    async def append_async(self, records: Sequence[bytes]) -> list[int]:
        if not records:
            return []
        return await asyncio.wrap_future(self._loop.submit(self._publish(list(records))))

    def close(self) -> None:
        self._stopping = True
        self._stats.cancel()
        with contextlib.suppress(Exception):
            self._loop.run(self._nc.drain(), 10)
        self._loop.stop()

    # -- on the loop thread ----------------------------------------------------------------------------

    async def _publish(self, records: list[bytes]) -> list[int]:
        js, prefix = self._js, self._prefix
        sends = [
            js.publish(
                prefix + str(int.from_bytes(record[:4], "big")),
                record,
                timeout=ACK_TIMEOUT_S,
                headers={"Nats-Msg-Id": message_id(record)},
            )
            for record in records
        ]
        answers = await asyncio.gather(*sends, return_exceptions=True)
        sequences: list[int] = []
        for answer in answers:
            if isinstance(answer, BaseException):
                raise self._failure(answer)
            sequences.append(int(answer.seq))
        return sequences

    def _failure(self, exc: BaseException) -> WALError:
        if isinstance(exc, APIError) and exc.err_code in (10077, 10028):  # message/bytes limits of the stream
            return LogFullError(f"the JetStream stream is full: {exc.description}")
        detail = exc.description if isinstance(exc, APIError) else (str(exc) or type(exc).__name__)
        error = LogUnavailableError(f"JetStream did not acknowledge the bundles: {detail}")
        self._errors[:] = [error]
        return error

    async def _watch(self) -> None:
        """The backlog the edge's 429 looks at, and whether aggregators are attached, refreshed every second."""
        while not self._stopping:
            with contextlib.suppress(Exception):
                info = await self._js.stream_info(self.settings.log_stream)
                self._backlog_bytes = int(info.state.bytes)
                self._backlog_records = int(info.state.messages)
                consumer = await self._js.consumer_info(self.settings.log_stream, CONSUMER)
                self._consumers_seen = bool(consumer.num_waiting or consumer.num_ack_pending)
            await asyncio.sleep(STATS_EVERY_S)


@dataclass(slots=True)
class _Held:
    lsn: int
    msg: Msg


class JetStreamRecordLog:
    """The aggregator's `RecordLog` on the shared durable pull consumer.

    LSNs here are this process's own numbering of the messages it was handed, only so that the unchanged
    `Aggregator` can say "everything up to here is stored" (`checkpoint`), which acknowledges those messages.
    Messages read and not yet acknowledged are held: a pass that failed reads the same ones again (they stay
    ours while `in_progress` keeps them alive), and a process that dies leaves them to be redelivered.
    """

    def __init__(self, settings: ServerSettings, *, ack_wait_s: float = 30.0, fetch_wait_s: float = 1.0) -> None:
        self.settings = settings
        self.ack_wait_s = ack_wait_s
        self.fetch_wait_s = fetch_wait_s
        self._errors: list[BaseException] = []
        self._held: list[_Held] = []
        self._next_lsn = 1
        self._checkpointed = 0
        self._lock = threading.Lock()
        self._stopping = False
        self.acked = 0
        self._loop = _LoopThread("fluxrun-nats-consumer")
        try:
            self._nc: Client = self._loop.run(
                _connect(settings, "fluxrun-aggregator", self._errors), CONNECT_TIMEOUT_S * 2
            )
            self._js = self._nc.jetstream(timeout=ACK_TIMEOUT_S)
            self._loop.run(ensure_stream(self._js, settings), STREAM_SETUP_S + CONNECT_TIMEOUT_S)
            self._sub = self._loop.run(self._subscribe(), CONNECT_TIMEOUT_S * 2)
        except BaseException:
            self._loop.stop()
            raise
        self._keepalive = self._loop.submit(self._keep_alive())

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        config = api.ConsumerConfig(
            durable_name=CONSUMER,
            ack_policy=api.AckPolicy.EXPLICIT,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_wait=self.ack_wait_s,
            max_deliver=-1,  # never give a bundle up: a failing store or index is retried until it works
            max_ack_pending=MAX_ACK_PENDING,
        )
        return await self._js.pull_subscribe(
            f"{subject_prefix(self.settings)}.*", durable=CONSUMER, stream=self.settings.log_stream, config=config
        )

    # -- RecordLog -------------------------------------------------------------------------------------

    @property
    def checkpointed_lsn(self) -> int:
        return self._checkpointed

    def read_from(self, lsn_exclusive: int, max_records: int | None = None) -> Iterator[tuple[int, bytes]]:
        """Held messages after `lsn_exclusive` (a retried pass), else up to `max_records` new ones."""
        limit = max(1, min(max_records or 1000, 10_000))
        with self._lock:
            held = [(h.lsn, h.msg.data) for h in self._held if h.lsn > lsn_exclusive][:limit]
        if held:
            return iter(held)
        try:
            msgs = self._loop.run(self._fetch(limit), self.fetch_wait_s + ACK_TIMEOUT_S + 5)
        except TimeoutError:
            return iter(())
        out: list[tuple[int, bytes]] = []
        with self._lock:
            for msg in msgs:
                item = _Held(self._next_lsn, msg)
                self._next_lsn += 1
                self._held.append(item)
                out.append((item.lsn, msg.data))
        return iter(out)

    def checkpoint(self, lsn: int) -> None:
        """Everything up to `lsn` is in the object store and the index: acknowledge those messages."""
        with self._lock:
            done = [h for h in self._held if h.lsn <= lsn]
            self._held = [h for h in self._held if h.lsn > lsn]
            self._checkpointed = max(self._checkpointed, lsn)
        if done:
            self._loop.run(self._ack([h.msg for h in done]), ACK_TIMEOUT_S + 5)
            self.acked += len(done)

    def close(self) -> None:
        self._stopping = True
        self._keepalive.cancel()
        with contextlib.suppress(Exception):
            self._loop.run(self._nc.close(), 5)
        self._loop.stop()

    # -- on the loop thread ----------------------------------------------------------------------------

    async def _fetch(self, limit: int) -> list[Msg]:
        try:
            return await self._sub.fetch(limit, timeout=self.fetch_wait_s)
        except (TimeoutError, nats.errors.TimeoutError):
            return []

    async def _ack(self, msgs: list[Msg]) -> None:
        # An ack that is lost only means a redelivery, which the index stores once; plain acks, then one flush.
        for msg in msgs:
            await msg.ack()
        await self._nc.flush(timeout=int(ACK_TIMEOUT_S))

    async def _keep_alive(self) -> None:
        """Tell JetStream the held messages are still being worked on, so a long pass is not redelivered."""
        while not self._stopping:
            await asyncio.sleep(self.ack_wait_s / 3)
            with self._lock:
                msgs = [h.msg for h in self._held]
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.in_progress()


def wait_for_stream(settings: ServerSettings, timeout_s: float = 30.0) -> None:
    """Block until the stream exists and answers (used by tools and tests after a cluster restart)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            JetStreamEdge(settings).close()
            return
        except LogSetupError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
