"""Rate limits for refusals: what stops unauthenticated requests from flooding the agent and its audit log.

Anyone who can reach the agent (any web page, through the browser, for an agent on loopback) can send it
requests without a valid grant. Each refusal costs an fsynced audit line, so refusals are rate limited by a
token bucket per client address and one for all clients together. Over the limit the agent answers 429
with Retry-After and, instead of a line per request, writes at most one summarising line per interval.
Requests whose grant verifies are never limited here: a flood must not lock out the dashboard's users.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Any

__all__ = ["RefusalLimiter", "TokenBucket"]


class TokenBucket:
    """`burst` tokens, refilled at `rate` a second."""

    def __init__(self, burst: float, rate: float, now: float) -> None:
        self.burst = burst
        self.rate = rate
        self.tokens = burst
        self.updated = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 if there was one, else the seconds until there will be."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RefusalLimiter:
    """Per-client and global buckets for refusals, and the summary of the ones refused for being over."""

    def __init__(
        self,
        *,
        burst: int,
        rate: float,
        global_factor: int = 10,
        max_clients: int = 10_000,
        summary_interval: float = 10.0,
    ) -> None:
        self.burst = burst
        self.rate = rate
        self.global_factor = global_factor
        self.max_clients = max_clients
        self.summary_interval = summary_interval
        self._clients: OrderedDict[str, TokenBucket] = OrderedDict()
        self._global: TokenBucket | None = None
        self._lock = threading.Lock()
        self._summary_at = -math.inf
        self._suppressed = 0
        self._suppressed_clients: set[str] = set()

    def retry_after(self, client: str, now: float) -> float:
        """Charge one refusal to `client`: 0.0 if it may be answered (and audited), else seconds to wait."""
        with self._lock:
            if self._global is None:
                self._global = TokenBucket(self.burst * self.global_factor, self.rate * self.global_factor, now)
            bucket = self._clients.pop(client, None) or TokenBucket(self.burst, self.rate, now)
            self._clients[client] = bucket  # most recently seen last; the least recent is forgotten first
            while len(self._clients) > self.max_clients:
                self._clients.popitem(last=False)
            wait = bucket.take(now)
            return wait if wait > 0 else self._global.take(now)

    def limited(self, client: str, now: float, iso_now: str) -> dict[str, Any] | None:
        """Count a refusal answered 429; return a summary audit entry when one is due (once an interval)."""
        with self._lock:
            self._suppressed += 1
            if len(self._suppressed_clients) < self.max_clients:
                self._suppressed_clients.add(client)
            if now - self._summary_at < self.summary_interval:
                return None
            summary = {
                "time": iso_now,
                "result": "rate_limited",
                "status": 429,
                "reason": "rate_limited",
                "suppressed": self._suppressed,
                "clients": len(self._suppressed_clients),
                "example_client": client,
                "interval_seconds": self.summary_interval,
                "message": (
                    f"{self._suppressed} refusals over the rate limit were answered 429 without an audit line each "
                    f"since the last summary"
                ),
            }
            self._summary_at = now
            self._suppressed = 0
            self._suppressed_clients.clear()
            return summary
