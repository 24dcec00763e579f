"""When to send again, and when the server counts as down: the sender's retry policy, free of threads,
sockets and clocks, so every rule is a plain function of numbers (and testable as one).

- A failed attempt waits: the server's Retry-After when it gave one (never earlier, up to 10% later, capped
  at `max_retry_after`), else exponential backoff with jitter, between half and all of
  `base * 2^(failures-1)`, capped at `cap`.
- The server counts as down (the batch goes to the spool, and new bundles follow it there until a probe
  succeeds) after `max_attempts` failures in a row, when the batch came from the spool, when the sink is
  closing, or when the wait would outlast a flush the app is waiting on.
- An answer is sorted by status: 2xx delivered; 408, 429 and 5xx retried; 413 for a batch of several
  bundles split in halves to find the one too large; any other 4xx dropped (sending again would be
  refused the same way).
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from typing import Literal

from fluxrun._internal import wall_time

__all__ = ["RetryPolicy", "Verdict", "parse_retry_after"]

Verdict = Literal["delivered", "retry", "split", "drop"]


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - wall_time())


@dataclass(frozen=True)
class RetryPolicy:
    base: float = 0.5
    cap: float = 30.0
    max_retry_after: float = 600.0
    max_attempts: int = 3

    def delay(self, failures: int, retry_after: float | None, jitter: float) -> float:
        """Seconds to wait after the `failures`-th failure in a row; `jitter` is uniform in [0, 1)."""
        if retry_after is not None:
            return min(retry_after, self.max_retry_after) * (1 + 0.1 * jitter)
        return float(min(self.cap, self.base * 2 ** (failures - 1)) * (0.5 + 0.5 * jitter))

    def gives_up(
        self, failures: int, delay: float, *, from_spool: bool, closing: bool, flush_left: float | None
    ) -> bool:
        """True when the server counts as down: the batch goes to the spool instead of waiting in memory."""
        return from_spool or failures >= self.max_attempts or closing or (flush_left is not None and delay > flush_left)

    @staticmethod
    def spool_rather_than_wait(backoff_left: float, *, down: bool, closing: bool, flush_left: float | None) -> bool:
        """While backing off, queued bundles go to the spool when waiting cannot help: the server is down,
        the sink is closing, or the wait outlasts a flush."""
        return backoff_left > 0 and (down or closing or (flush_left is not None and backoff_left > flush_left))

    @staticmethod
    def verdict(status: int, batch_size: int) -> Verdict:
        if 200 <= status < 300:
            return "delivered"
        if status in (408, 429) or status >= 500:
            return "retry"
        if status == 413 and batch_size > 1:
            return "split"
        return "drop"
