"""The HTTP sender against a scripted server on loopback: batching, retries, spool, drops, flush and close."""

from __future__ import annotations

import itertools
import logging
import os
import time

import pytest
from shipping_fixtures import TOKEN, Answer

from fluxrun.errors import ConfigError
from fluxrun.shipping.http import parse_dsn, parse_retry_after


def write_all(sink, pairs):
    for name, data in pairs:
        sink.write(name, data)


# -- batching and the wire format ------------------------------------------------------------------------


def test_bundles_are_batched_and_sent_with_the_project_token(ingest, make_sink, make_bundles):
    sink = make_sink(ingest, linger=0.3)
    pairs = make_bundles(5)
    write_all(sink, pairs)
    assert sink.flush(5.0)
    assert ingest.accepted == [data for _, data in pairs]  # all of them, once, in order
    assert len(ingest.seen) == 1  # the linger gathered them into one request
    headers = ingest.seen[0].headers
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert headers["content-type"] == "application/x-fluxrun-batch"
    assert headers["user-agent"].startswith("fluxrun.python/")
    stats = sink.stats()
    assert stats["sent"] == 5 and stats["batches"] == 1 and stats["pending"] == 0
    assert stats.get("retried", 0) == 0 and stats.get("spooled", 0) == 0


def test_batches_respect_the_count_and_byte_limits(ingest, make_sink, make_bundles):
    sink = make_sink(ingest, linger=0.3, max_batch_bundles=3, max_batch_bytes=10_000)
    write_all(sink, make_bundles(7))
    assert sink.flush(5.0)
    assert [len(s.bundles) for s in ingest.seen] == [3, 3, 1]

    ingest.seen.clear()
    write_all(sink, make_bundles(3, "big", size=6_000))  # two never fit in 10 000 bytes together
    assert sink.flush(5.0)
    assert [len(s.bundles) for s in ingest.seen] == [1, 1, 1]


def test_batches_are_zstd_compressed_only_when_that_pays(ingest, make_sink):
    sink = make_sink(ingest)
    sink.write("text", b"summary " * 2000)
    assert sink.flush(5.0)
    sink.write("noise", os.urandom(4000))  # sealed payloads are encrypted: zstd cannot shrink them
    assert sink.flush(5.0)
    assert ingest.seen[0].headers.get("content-encoding") == "zstd"  # and the server's decoder read it
    assert "content-encoding" not in ingest.seen[1].headers
    assert len(ingest.accepted) == 2


# -- retries ------------------------------------------------------------------------------------------


def test_failures_are_retried_with_exponential_backoff_and_jitter(ingest, make_sink, fake_clock, until):
    ingest.clock = fake_clock.now
    ingest.script.extend([Answer(500), Answer(502), Answer(503)])
    sink = make_sink(ingest, clock=fake_clock, backoff_base=1.0, backoff_cap=60.0, max_attempts=10)
    started = time.monotonic()
    sink.write("one", b"one")  # no flush: a flush would rather spool than wait out a long backoff
    assert until(lambda: ingest.accepted)
    assert time.monotonic() - started < 3.0  # the fake clock made the waits free
    times = [s.at for s in ingest.seen]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 3
    for n, gap in enumerate(gaps):  # between half and all of base * 2^n
        assert 0.5 * 2**n <= gap <= 2**n + 0.01, gaps
    assert len(set(round(g / 2**n, 6) for n, g in enumerate(gaps))) > 1  # jittered, not a fixed ladder
    assert ingest.accepted == [b"one"]
    assert until(lambda: sink.stats()["sent"] == 1)
    assert sink.stats()["retried"] == 3


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured(ingest, make_sink, fake_clock, until, status):
    ingest.clock = fake_clock.now
    ingest.script.append(Answer(status, headers={"Retry-After": "7"}))
    sink = make_sink(ingest, clock=fake_clock, backoff_base=0.01, max_attempts=5)
    sink.write("one", b"one")
    assert until(lambda: ingest.accepted)
    first, second = ingest.seen
    assert 7.0 <= second.at - first.at <= 7.0 * 1.1 + 0.01  # never earlier than asked, at most 10% later
    assert ingest.accepted == [b"one"]


def test_retry_after_reads_seconds_and_http_dates():
    assert parse_retry_after("30") == 30.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    from email.utils import formatdate

    later = parse_retry_after(formatdate(time.time() + 120, usegmt=True))
    assert later is not None and 115 <= later <= 121
    assert parse_retry_after(formatdate(time.time() - 60, usegmt=True)) == 0.0


# -- the spool ----------------------------------------------------------------------------------------


def test_an_unreachable_server_spools_and_the_spool_is_delivered_when_it_is_back(
    ingest, make_sink, make_bundles, until, caplog
):
    ingest.stop()  # connection refused from now on
    sink = make_sink(ingest, max_attempts=2)
    pairs = make_bundles(12)
    with caplog.at_level(logging.WARNING, logger="fluxrun"):
        write_all(sink, pairs[:6])
        assert sink.flush(5.0)  # delivered or spooled: here, spooled
        write_all(sink, pairs[6:])
        assert sink.flush(5.0)
    stats = sink.stats()
    assert stats["spooled"] == 12 and stats["spool_files"] == 12 and stats["sent"] == 0
    (message,) = [r.getMessage() for r in caplog.records]  # said once, not once per attempt
    assert "cannot deliver bundles" in message and "ConnectionRefusedError" in message and TOKEN not in message

    ingest.start()  # the same port again
    assert until(lambda: len(ingest.accepted) >= 12)
    time.sleep(0.2)  # nothing more may come
    assert ingest.accepted == [data for _, data in pairs]  # none lost, none doubled, oldest first
    stats = sink.stats()
    assert stats["delivered_from_spool"] == 12 and stats["sent"] == 12 and stats["spool_files"] == 0
    assert stats["retried"] > 0


def test_5xx_answers_spool_like_an_unreachable_server(ingest, make_sink, make_bundles, until):
    ingest.default = Answer(500, detail="database is down")
    sink = make_sink(ingest, max_attempts=2)
    pairs = make_bundles(4)
    write_all(sink, pairs)
    assert sink.flush(5.0)
    assert sink.stats()["spooled"] == 4 and ingest.accepted == []
    ingest.default = Answer(202)
    assert until(lambda: sink.stats()["delivered_from_spool"] == 4)
    assert ingest.accepted == [data for _, data in pairs]


def test_the_spool_is_bounded_and_refuses_the_newest(ingest, make_sink, make_bundles, until, caplog):
    ingest.stop()
    sink = make_sink(ingest, max_attempts=1, spool_max_files=3)
    pairs = make_bundles(6)
    with caplog.at_level(logging.WARNING, logger="fluxrun"):
        write_all(sink, pairs)
        assert sink.flush(5.0)
    stats = sink.stats()
    assert stats["spooled"] == 3 and stats["dropped_spool_full"] == 3 and stats["spool_files"] == 3
    full = [r for r in caplog.records if "is full" in r.getMessage()]
    assert len(full) == 1 and "keeping the oldest" in full[0].getMessage()  # logged once, when dropping starts

    ingest.start()
    assert until(lambda: len(ingest.accepted) == 3)
    assert ingest.accepted == [data for _, data in pairs[:3]]  # the oldest were kept


def test_a_new_sink_delivers_what_an_earlier_run_left_in_the_spool(ingest, make_sink, make_bundles, until, tmp_path):
    ingest.stop()
    first = make_sink(ingest, spool=tmp_path / "shared")
    write_all(first, make_bundles(3))
    assert first.close(2.0)  # what the server could not take is on disk
    assert first.stats()["spool_files"] == 3

    ingest.start()
    second = make_sink(ingest, spool=tmp_path / "shared")  # the next start of the app: no new bundle needed
    assert until(lambda: len(ingest.accepted) == 3)
    assert second.stats()["delivered_from_spool"] == 3


def test_one_process_at_a_time_drains_a_shared_spool(tmp_path):
    from fluxrun.shipping.spool import Spool

    a = Spool(tmp_path, max_files=10, max_bytes=1000)
    b = Spool(tmp_path, max_files=10, max_bytes=1000)  # another gunicorn worker on the same folder
    assert a.put("x", b"data")
    with a.claim() as mine, b.claim() as theirs:
        assert mine and not theirs
    with b.claim() as theirs:
        assert theirs
        (entry,), unreadable = b.oldest(10, 1000)
        assert entry.name == "x" and entry.data == b"data" and unreadable == []


# -- the bounded queue --------------------------------------------------------------------------------


def test_a_full_queue_never_blocks_the_writer_and_drops_with_a_count(ingest, make_sink, make_bundles, caplog):
    ingest.default = Answer(202, delay=1.0)  # a slow server: the first batch stays in flight
    sink = make_sink(ingest, max_queue=2, spool_max_files=3)
    with caplog.at_level(logging.WARNING, logger="fluxrun"):
        started = time.perf_counter()
        write_all(sink, make_bundles(20))
        elapsed = time.perf_counter() - started
    assert elapsed < 0.5  # loosely: the writer never waited for the server
    stats = sink.stats()
    assert stats["spooled"] == 3 and stats["dropped_spool_full"] >= 13  # 2 queued, 1 or 2 in flight
    assert stats["pending"] + stats["spooled"] + stats["dropped_spool_full"] == 20
    assert len([r for r in caplog.records if "is full" in r.getMessage()]) == 1


def test_a_queue_bounded_by_bytes_overflows_to_the_spool(ingest, make_sink, make_bundles):
    ingest.default = Answer(202, delay=0.5)
    sink = make_sink(ingest, max_queue=100, max_queue_bytes=3_000)
    write_all(sink, make_bundles(6, size=1_000))
    assert sink.stats()["spooled"] >= 2  # at most 3 000 bytes wait in memory
    assert sink.flush(5.0)


# -- what the server will never take -------------------------------------------------------------------


def test_bundles_the_server_rejects_are_dropped_with_their_reason_and_logged_once(
    ingest, make_sink, make_bundles, caplog
):
    ingest.reject = lambda bundle: "tampered" if bundle.startswith(b"bad") else None
    sink = make_sink(ingest, linger=0.2)
    with caplog.at_level(logging.WARNING, logger="fluxrun"):
        for good, bad in zip(make_bundles(3, "good"), make_bundles(3, "bad"), strict=True):
            sink.write(*good)
            sink.write(*bad)
        assert sink.flush(5.0)
    stats = sink.stats()
    assert stats["sent"] == 3 and stats["dropped_rejected_tampered"] == 3
    assert len(ingest.seen) == 1  # not retried
    (message,) = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert "bad-0000 (tampered): it is tampered" in message


def test_a_bad_token_is_not_retried_and_says_so(ingest, make_sink, make_bundles, caplog):
    ingest.default = Answer(401, detail="ingest token is unknown or revoked")
    sink = make_sink(ingest, linger=0.2)
    with caplog.at_level(logging.WARNING, logger="fluxrun"):
        write_all(sink, make_bundles(3))
        assert sink.flush(5.0)
        write_all(sink, make_bundles(2, "later"))
        assert sink.flush(5.0)
    assert len(ingest.seen) == 2  # one request per batch, never again
    assert sink.stats()["dropped_http_401"] == 5 and sink.stats()["spool_files"] == 0
    (message,) = [r.getMessage() for r in caplog.records]
    assert "refused the project token in FLUXRUN_DSN (401: ingest token is unknown or revoked)" in message
    assert "create-token" in message and TOKEN not in message


def test_a_too_large_bundle_is_dropped_alone(ingest, make_sink, caplog):
    too_big = 5_000

    def refuse(bundles):
        return Answer(413, detail="bundle too large") if any(len(b) > too_big for b in bundles) else None

    ingest.refuse = refuse
    sink = make_sink(ingest, linger=0.2)
    with caplog.at_level(logging.WARNING, logger="fluxrun"):
        sink.write("small-1", b"small-1")
        sink.write("huge", b"huge" + b"x" * too_big)
        sink.write("small-2", b"small-2")
        sink.write("small-3", b"small-3")
        assert sink.flush(5.0)
    assert sorted(ingest.accepted) == [b"small-1", b"small-2", b"small-3"]
    assert sink.stats()["dropped_http_413"] == 1 and sink.stats()["sent"] == 3
    assert "too large" in caplog.text


# -- flush and close -----------------------------------------------------------------------------------


def test_flush_and_close_keep_their_timeout_when_the_server_hangs(ingest, make_sink, make_bundles, until, tmp_path):
    ingest.default = Answer(202, delay=3.0)
    sink = make_sink(ingest, spool=tmp_path / "hang", max_batch_bundles=2)
    write_all(sink, make_bundles(5))
    assert until(lambda: ingest.seen)  # the first batch is in flight, with the full request timeout
    started = time.monotonic()
    assert sink.flush(0.5) is False  # neither delivered nor spooled in time: say so
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    assert sink.close(0.5)  # nothing lost: the queue, and a copy of the batch in flight, are in the spool
    assert time.monotonic() - started < 1.0
    assert sink.stats()["spool_files"] == 5


def test_a_flush_bounds_the_requests_it_waits_for(ingest, make_sink, make_bundles, until, tmp_path):
    ingest.default = Answer(202, delay=3.0)
    sink = make_sink(ingest, spool=tmp_path / "bounded", linger=0.3)
    write_all(sink, make_bundles(3))
    started = time.monotonic()
    assert sink.flush(0.5)  # the request started during the flush gives up at its deadline: spooled
    assert time.monotonic() - started < 1.0
    assert sink.stats()["spool_files"] == 3 and sink.stats()["pending"] == 0


def test_close_spools_what_the_server_did_not_take(ingest, make_sink, make_bundles):
    ingest.stop()
    sink = make_sink(ingest, backoff_base=5.0, max_attempts=5)  # the next attempt is beyond the timeout
    write_all(sink, make_bundles(4))
    started = time.monotonic()
    assert sink.close(1.0)
    assert time.monotonic() - started < 1.5
    assert sink.stats()["spooled"] == 4 and sink.stats()["spool_files"] == 4
    sink.write("after", b"after")  # a straggler after close is spooled, never lost or raised
    assert sink.stats()["spool_files"] == 5


def test_flush_without_anything_to_send_returns_at_once(ingest, make_sink):
    sink = make_sink(ingest)
    started = time.monotonic()
    assert sink.flush(5.0)
    assert time.monotonic() - started < 0.1


# -- never hurt the app ---------------------------------------------------------------------------------


def test_a_broken_spool_folder_is_counted_never_raised(ingest, make_sink, tmp_path, caplog):
    ingest.stop()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the spool should be")
    sink = make_sink(ingest, spool=blocker / "spool", max_attempts=1)
    with caplog.at_level(logging.WARNING, logger="fluxrun"):
        sink.write("one", b"one")
        assert sink.flush(2.0)
    assert sink.stats()["dropped_spool_error"] == 1
    assert "could not write to the spool" in caplog.text


def test_the_dsn_names_the_endpoint_and_plain_http_is_only_for_loopback():
    endpoint = parse_dsn("https://frt_abc@fluxrun.example.com/acme-shop")
    assert (endpoint.host, endpoint.port, endpoint.token, endpoint.project) == (
        "fluxrun.example.com",
        443,
        "frt_abc",
        "acme-shop",
    )
    assert endpoint.url == "https://fluxrun.example.com:443/v1/executions"
    assert parse_dsn("http://frt_abc@127.0.0.1:8400/p").url == "http://127.0.0.1:8400/v1/executions"
    assert parse_dsn("http://frt_abc@localhost:8400/p").port == 8400
    assert parse_dsn("http://frt_abc@[::1]:8400/p").url == "http://[::1]:8400/v1/executions"
    with pytest.raises(ConfigError, match="unencrypted") as raised:
        parse_dsn("http://frt_secret@fluxrun.example.com/acme-shop")
    assert "frt_secret" not in str(raised.value)


def test_an_empty_file_left_in_the_spool_is_removed_and_counted(ingest, make_sink, tmp_path, until):
    spool = tmp_path / "crashed"
    spool.mkdir()
    (spool / "00000000000000001-1-00000001-lost.fluxrun").write_bytes(b"")  # the machine died mid-write
    (spool / "00000000000000002-1-00000002-kept.fluxrun").write_bytes(b"kept")
    sink = make_sink(ingest, spool=spool)  # finds them at start
    assert until(lambda: ingest.accepted == [b"kept"])
    assert until(lambda: sink.stats()["dropped_spool_unreadable"] == 1)
    assert sink.stats()["delivered_from_spool"] == 1 and not list(spool.glob("*.fluxrun"))
