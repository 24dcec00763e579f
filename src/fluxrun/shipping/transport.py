"""One delivery attempt to a FluxRun server: the endpoint from the DSN, the HTTP connection, and the
sorting of a batch's bundles into delivered, dropped (with a reason) and to retry.

It uses the standard library's `http.client`, which FluxRun does not intercept, so shipping never calls
a patched function or records itself. Nothing here waits or retries: that is the sender's job, by the
rules of `RetryPolicy`.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import ssl
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import zstandard

from fluxrun._config import check_dsn
from fluxrun._version import __version__
from fluxrun.errors import ConfigError
from fluxrun.shipping.policy import RetryPolicy, parse_retry_after

__all__ = ["Bundle", "Endpoint", "HttpTransport", "Outcome", "encode_batch", "parse_dsn"]

MiB = 1024 * 1024
PATH = "/v1/executions"
_MAX_ANSWER = 1 * MiB  # the server answers a few hundred bytes of JSON; never buffer more than this


def encode_batch(bundles: list[bytes]) -> bytes:
    """The ingest body: each bundle after its length as a 4-byte big-endian integer (the server's format)."""
    return b"".join(len(b).to_bytes(4, "big") + b for b in bundles)


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to ship, from the DSN. `url` has no token in it, so it is safe to log."""

    scheme: str
    host: str
    port: int
    token: str
    project: str

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{PATH}"


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_dsn(dsn: str) -> Endpoint:
    """`https://TOKEN@host[:port]/PROJECT` -> Endpoint. http:// only for loopback: the token would travel in clear."""
    check_dsn(dsn)
    parts = urlsplit(dsn)
    host = parts.hostname or ""
    if parts.scheme == "http" and not _is_loopback(host):
        raise ConfigError(
            f"FLUXRUN_DSN uses http:// for {host!r}: the project token would cross the network unencrypted. "
            "Use https:// (http:// is accepted only for loopback: localhost, 127.0.0.1, ::1)"
        )
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ConfigError(
            f"FLUXRUN_DSN has an invalid port for {host!r}; expected https://TOKEN@host:PORT/PROJECT"
        ) from None
    return Endpoint(parts.scheme, host, port, unquote(parts.username or ""), parts.path.strip("/"))


@dataclass(eq=False)  # compared by identity: the same bundle may be queued twice by a retrying app
class Bundle:
    name: str
    data: bytes
    enqueued: float
    path: Path | None = None  # where it lies in the spool, when it came from there


@dataclass
class Outcome:
    delivered: list[Bundle] = field(default_factory=list)
    dropped: list[tuple[Bundle, str]] = field(default_factory=list)  # (bundle, reason)
    retry: list[Bundle] = field(default_factory=list)
    retry_after: float | None = None
    problem: str = ""  # why the retry list could not be delivered, for the log
    notes: dict[str, str] = field(default_factory=dict)  # reason -> what to tell the user, logged once
    batches: int = 0  # POSTs answered 2xx

    def merge(self, other: Outcome) -> Outcome:
        self.delivered += other.delivered
        self.dropped += other.dropped
        self.retry += other.retry
        self.retry_after = other.retry_after if other.retry else self.retry_after
        self.problem = other.problem or self.problem
        self.notes.update(other.notes)
        self.batches += other.batches
        return self


def _detail(body: bytes) -> str:
    try:
        return str(json.loads(body).get("detail"))[:300]
    except Exception:
        return body[:200].decode("utf-8", "replace").strip() or "no detail"


class HttpTransport:
    """POSTs batches to the server over one kept-alive connection (used by the sender thread only)."""

    def __init__(self, endpoint: Endpoint, *, compress: bool = True) -> None:
        self.endpoint = endpoint
        self.compress = compress
        self._headers = {
            "Authorization": f"Bearer {endpoint.token}",
            "Content-Type": "application/x-fluxrun-batch",
            "User-Agent": f"fluxrun.python/{__version__}",
        }
        self._conn: http.client.HTTPConnection | None = None
        self._compressor = zstandard.ZstdCompressor(level=3)

    def deliver(self, batch: list[Bundle], timeout: float) -> Outcome:
        """POST one batch and sort its bundles into delivered, dropped (with reason) and to retry."""
        body = encode_batch([b.data for b in batch])
        headers = dict(self._headers)
        if self.compress:
            packed = self._compressor.compress(body)
            if len(packed) < len(body) * 0.9:
                body = packed
                headers["Content-Encoding"] = "zstd"
        try:
            status, retry_after, answer = self._post(body, headers, timeout)
        except Exception as exc:
            return Outcome(retry=list(batch), problem=f"{type(exc).__name__}: {exc}")
        verdict = RetryPolicy.verdict(status, len(batch))
        if verdict == "delivered":
            outcome = self._sort_answer(batch, answer)
            outcome.batches = 1
            return outcome
        if verdict == "retry":
            problem = f"HTTP {status}: {_detail(answer)}"
            return Outcome(retry=list(batch), retry_after=parse_retry_after(retry_after), problem=problem)
        if verdict == "split":  # one bundle too many or too big: halve until it is found
            half = len(batch) // 2
            first = self.deliver(batch[:half], timeout)
            if first.retry:
                first.retry += batch[half:]
                return first
            return first.merge(self.deliver(batch[half:], timeout))
        reason = f"http_{status}"
        return Outcome(dropped=[(b, reason) for b in batch], notes={reason: self._refusal(status, batch, answer)})

    def _refusal(self, status: int, batch: list[Bundle], answer: bytes) -> str:
        detail = _detail(answer)
        url = self.endpoint.url
        if status == 401:
            return (
                f"the server at {url} refused the project token in FLUXRUN_DSN (401: {detail}): the "
                "token is wrong or revoked. Create one with `fluxrun server admin create-token WORKSPACE/PROJECT` "
                "and set FLUXRUN_DSN=https://TOKEN@host/PROJECT. Bundles are dropped until then "
                "(counted as dropped_http_401 in fluxrun.stats())."
            )
        if status == 413:
            return (
                f"the server at {url} refused a bundle of {len(batch[0].data)} bytes as too large "
                f"(413: {detail}); dropping it. Lower max_body_size (FLUXRUN_MAX_BODY_SIZE) or raise the server's "
                "FLUXRUN_SERVER_MAX_BUNDLE_BYTES (counted as dropped_http_413 in fluxrun.stats())."
            )
        return (
            f"the server at {url} refused {len(batch)} bundles with HTTP {status} ({detail}); dropping "
            f"them, as sending them again would be refused the same way (counted as dropped_http_{status})."
        )

    def _sort_answer(self, batch: list[Bundle], answer: bytes) -> Outcome:
        outcome = Outcome()
        try:
            rejected = json.loads(answer).get("rejected") or []
        except Exception:
            rejected = []  # a 2xx without the usual answer: the server took the batch
        refused: dict[int, tuple[str, str]] = {}
        for item in rejected:
            if isinstance(item, dict) and isinstance(item.get("index"), int) and 0 <= item["index"] < len(batch):
                refused[item["index"]] = (str(item.get("reason") or "unknown"), str(item.get("message") or ""))
        for index, bundle in enumerate(batch):
            if index not in refused:
                outcome.delivered.append(bundle)
                continue
            code, message = refused[index]
            reason = f"rejected_{code}"
            outcome.dropped.append((bundle, reason))
            outcome.notes.setdefault(
                reason,
                f"the server at {self.endpoint.url} rejected bundle {bundle.name} ({code}): {message}. Dropping it; "
                f"later ones rejected for the same reason are counted as dropped_{reason} in fluxrun.stats() "
                "without another log line.",
            )
        return outcome

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self.endpoint.scheme == "https":
            return http.client.HTTPSConnection(
                self.endpoint.host, self.endpoint.port, timeout=timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self.endpoint.host, self.endpoint.port, timeout=timeout)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with suppress(Exception):  # closing a broken socket
                conn.close()

    def _post(self, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, str | None, bytes]:
        """(status, Retry-After, answer). A kept-alive connection the server closed meanwhile is retried once."""
        for fresh in (False, True):
            conn = self._conn
            reused = conn is not None and not fresh
            if conn is None or fresh:
                self.close()
                conn = self._conn = self._connect(timeout)
            else:
                conn.timeout = timeout
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
            try:
                conn.request("POST", PATH, body=body, headers=headers)
                response = conn.getresponse()
                answer = response.read(_MAX_ANSWER)
                status, retry_after = response.status, response.getheader("Retry-After")
                if response.will_close or not response.isclosed():
                    self.close()
                return status, retry_after, answer
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if not reused:
                    raise
            except BaseException:
                self.close()
                raise
        raise AssertionError("unreachable")  # pragma: no cover
