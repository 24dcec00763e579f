"""The sender's retry policy as plain functions of numbers: no threads, sockets or clocks."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from fluxrun.shipping.policy import RetryPolicy, parse_retry_after

POLICY = RetryPolicy(base=0.5, cap=30.0, max_retry_after=600.0, max_attempts=3)


@pytest.mark.parametrize(("failures", "low", "high"), [(1, 0.25, 0.5), (2, 0.5, 1.0), (3, 1.0, 2.0), (20, 15.0, 30.0)])
def test_backoff_doubles_with_jitter_between_half_and_all_and_is_capped(failures, low, high):
    assert POLICY.delay(failures, None, 0.0) == low
    assert POLICY.delay(failures, None, 0.999999) == pytest.approx(high, rel=1e-5)


def test_retry_after_is_never_shortened_at_most_ten_percent_longer_and_capped():
    assert POLICY.delay(1, 30.0, 0.0) == 30.0
    assert POLICY.delay(1, 30.0, 0.999999) == pytest.approx(33.0, rel=1e-5)
    assert POLICY.delay(1, 86_400.0, 0.0) == 600.0


def test_the_server_counts_as_down_after_max_attempts_from_the_spool_when_closing_or_past_a_flush():
    calm = {"from_spool": False, "closing": False, "flush_left": None}
    assert not POLICY.gives_up(2, 1.0, **calm)
    assert POLICY.gives_up(3, 1.0, **calm)
    assert POLICY.gives_up(1, 1.0, **{**calm, "from_spool": True})
    assert POLICY.gives_up(1, 1.0, **{**calm, "closing": True})
    assert POLICY.gives_up(1, 1.0, **{**calm, "flush_left": 0.5})
    assert not POLICY.gives_up(1, 1.0, **{**calm, "flush_left": 2.0})


def test_queued_bundles_go_to_the_spool_only_when_waiting_cannot_help():
    assert not RetryPolicy.spool_rather_than_wait(0.0, down=True, closing=True, flush_left=0.0)  # no backoff
    assert not RetryPolicy.spool_rather_than_wait(1.0, down=False, closing=False, flush_left=None)
    assert RetryPolicy.spool_rather_than_wait(1.0, down=True, closing=False, flush_left=None)
    assert RetryPolicy.spool_rather_than_wait(1.0, down=False, closing=True, flush_left=None)
    assert RetryPolicy.spool_rather_than_wait(1.0, down=False, closing=False, flush_left=0.5)


@pytest.mark.parametrize(
    ("status", "size", "verdict"),
    [
        (200, 5, "delivered"),
        (202, 1, "delivered"),
        (408, 5, "retry"),
        (429, 5, "retry"),
        (500, 5, "retry"),
        (503, 1, "retry"),
        (413, 5, "split"),
        (413, 1, "drop"),
        (401, 5, "drop"),
        (400, 1, "drop"),
    ],
)
def test_answers_are_sorted_by_status(status, size, verdict):
    assert RetryPolicy.verdict(status, size) == verdict


def test_retry_after_reads_seconds_and_http_dates():
    assert parse_retry_after("30") == 30.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert 110 < parse_retry_after(formatdate(time.time() + 120, usegmt=True)) <= 120
    assert parse_retry_after(formatdate(time.time() - 60, usegmt=True)) == 0.0
