"""The log between the edge and the aggregators, as a seam: the local WAL or a NATS JetStream stream.

The edge appends accepted bundles and answers 202 once the log says they are durable; aggregators read
them, store them (object store, then index) and only then let the log forget them. Two implementations:

- the embedded default: `WriteAheadLog` on the node's own disk, read by the node's own aggregator process
  (`aggregator_process.py`), exactly as before;
- `FLUXRUN_SERVER_LOG_URL=nats://host:4222[,host2:4222,...]`: a JetStream stream (`log_nats.py`) that any
  number of stateless edge nodes publish to and any number of `fluxrun server aggregate` processes consume
  through one durable pull consumer (`aggregate_node.py`).

This module holds what both sides agree on: the edge's surface (`EdgeLog`), the aggregator link's surface
(`AggregatorLink`), how a log URL is read, the settings the distributed log refuses, and the message id
that makes a retried publish a duplicate JetStream drops.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

import orjson

if TYPE_CHECKING:
    from fluxrun_server.settings import ServerSettings

__all__ = [
    "MAX_LOG_SERVERS",
    "AggregatorLink",
    "EdgeLog",
    "message_id",
    "parse_log_url",
    "refuse_contradictions",
]

MAX_LOG_SERVERS = 32
MAX_MESSAGE_ID = 128  # longer bundle ids are hashed: JetStream keeps every id of the duplicate window in memory
_SCHEMES = ("nats", "tls")
_PROJECT = struct.Struct(">I")  # records.pack_record's prefix
_BUNDLE_HEAD = struct.Struct(">4sBI")  # magic, format version, header length (docs/bundle-format.md)


class EdgeLog(Protocol):
    """What the edge (POST /v1/executions) and /healthz use: a durable append and the node's health."""

    @property
    def healthy(self) -> bool: ...

    @property
    def last_error(self) -> BaseException | None: ...

    @property
    def backlog_bytes(self) -> int: ...

    @property
    def backlog_records(self) -> int: ...

    async def append_async(self, records: Sequence[bytes]) -> list[int]: ...

    def close(self) -> None: ...


class AggregatorLink(Protocol):
    """What a server node holds of aggregation: its own aggregator process, or a view of remote ones."""

    @property
    def pid(self) -> int | None: ...

    @property
    def ready(self) -> bool: ...

    @property
    def stored(self) -> int: ...

    @property
    def duplicates(self) -> int: ...

    @property
    def last_error(self) -> str | None: ...

    def start(self) -> None: ...

    def stop(self, timeout: float = 30.0) -> None: ...

    def wake(self) -> None: ...


def parse_log_url(url: str) -> list[str]:
    """The server URLs of `nats://host:port[,host:port,...]` (`tls://` too); a clear ValueError otherwise."""
    text = url.strip()
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in _SCHEMES:
        raise ValueError(f"FLUXRUN_SERVER_LOG_URL must start with nats:// or tls://, got {text[:40]!r}")
    hosts = [h.strip() for h in rest.split(",")]
    if not hosts or len(hosts) > MAX_LOG_SERVERS:
        raise ValueError(f"FLUXRUN_SERVER_LOG_URL lists 1 to {MAX_LOG_SERVERS} servers, got {len(hosts)}")
    servers = []
    for host in hosts:
        host = host.removeprefix(f"{scheme}://")
        parts = urlsplit(f"{scheme}://{host}")
        try:
            port = parts.port
        except ValueError:
            port = -1
        if not parts.hostname or port == -1 or parts.path not in ("", "/") or parts.query:
            raise ValueError(f"FLUXRUN_SERVER_LOG_URL: {host.rpartition('@')[2]!r} is not host[:port]")
        servers.append(f"{scheme}://{host.rstrip('/')}")
    return servers


def refuse_contradictions(settings: ServerSettings) -> None:
    """Settings the distributed log cannot work with, refused at start-up with what to change.

    Edge and aggregator nodes on other machines must see one index and one object store: a SQLite file or a
    local folder would split the data between nodes (and the query nodes would miss what others stored).
    """
    if not settings.log_url:
        return
    parse_log_url(settings.log_url)
    database = settings.database_url or ""
    if not database.startswith("postgresql"):
        raise ValueError(
            "FLUXRUN_SERVER_LOG_URL needs a shared index: set FLUXRUN_SERVER_DATABASE_URL=postgresql+psycopg://... "
            "(SQLite is a file on one node; the embedded default keeps it with the local WAL and no log URL)"
        )
    if not (settings.object_store_url or "").startswith("s3://"):
        raise ValueError(
            "FLUXRUN_SERVER_LOG_URL needs a shared object store: set "
            "FLUXRUN_SERVER_OBJECT_STORE_URL=s3://bucket/prefix (a local folder is on one node only)"
        )


def message_id(record: bytes) -> str:
    """JetStream's `Nats-Msg-Id` of an ingest record: project id and bundle id, read from the bundle's header.

    The same bundle sent again (a shipper retrying after a lost 202, or after a 503 whose publish did land)
    gets the same id, so JetStream stores it once within the stream's duplicate window; past the window, the
    index's unique bundle id keeps it stored once. The header was verified (signed) before it gets here.
    """
    (project_id,) = _PROJECT.unpack_from(record)
    bundle_id = ""
    try:
        magic, _version, length = _BUNDLE_HEAD.unpack_from(record, _PROJECT.size)
        start = _PROJECT.size + _BUNDLE_HEAD.size
        if magic == b"FLXR" and length <= 64 * 1024:
            value = orjson.loads(record[start : start + length]).get("bundle_id")
            bundle_id = value if isinstance(value, str) else ""
    except (struct.error, orjson.JSONDecodeError, AttributeError):
        bundle_id = ""
    if not bundle_id or len(bundle_id) > MAX_MESSAGE_ID or not bundle_id.isprintable():
        bundle_id = "sha256-" + hashlib.sha256(record).hexdigest()  # same bytes, same id
    return f"{project_id}:{bundle_id}"
