"""Redis commands (redis-py, sync and asyncio) and mail (smtplib, aiosmtplib) are recorded against real servers."""

from __future__ import annotations

import asyncio
import json
import smtplib
from email.message import EmailMessage

import aiosmtplib
import pytest
import redis
import redis.asyncio
from redis_server import redis_server
from smtp_sink import smtp_sink

import fluxrun
from fluxrun.bundle import read_bundle
from fluxrun.model.values import decode

PASSWORD = "right-password"


@pytest.fixture(scope="module")
def cache():
    with redis_server() as server:
        yield server


@pytest.fixture
def sink():
    with smtp_sink() as server:
        yield server


def test_redis_commands_pipelines_and_errors_are_recorded_bytes_safe(captured, cache):
    client = redis.Redis(host=cache.host, port=cache.port)

    @fluxrun.capture
    def remember(token: bytes) -> None:
        client.set("session:1", token)
        pipe = client.pipeline()
        pipe.incr("visits").get("session:1")
        pipe.execute()
        client.get("session:1")
        client.incr("session:1")  # not a number: redis answers with an error

    with pytest.raises(redis.ResponseError):
        remember(b"\x00\xff\xfe")
    events = captured.events("redis")
    calls = ["redis SET", "redis MULTI/EXEC [INCRBY GET]", "redis GET", "redis INCRBY"]
    assert [e["call"] for e in events] == calls
    set_, pipeline, get, _incr = (e["data"] for e in events)
    assert decode(set_["command"]) == ["SET", "session:1", b"\x00\xff\xfe"] and set_["result"] is True
    assert decode(pipeline["pipeline"]) == [["INCRBY", "visits", 1], ["GET", "session:1"]]
    assert decode(pipeline["result"]) == [1, b"\x00\xff\xfe"] and pipeline["transaction"] is True
    assert get["result"] != b"\x00\xff\xfe" and decode(get["result"]) == b"\x00\xff\xfe"  # encoded when sealed
    assert events[3]["error"]["type"] == "redis.exceptions:ResponseError"
    assert "not an integer" in events[3]["error"]["message"]
    assert "test_redis_smtp" in events[0]["site"]  # the app's line, not redis-py's


def test_asyncio_redis_commands_and_pipelines_are_recorded(captured, cache):
    @fluxrun.capture
    async def remember() -> None:
        client = redis.asyncio.Redis(host=cache.host, port=cache.port, decode_responses=True)
        await client.hset("profile:ann", mapping={"name": "Ann"})
        async with client.pipeline(transaction=False) as pipe:
            await pipe.hgetall("profile:ann").ttl("profile:ann").execute()
        await client.aclose()
        raise LookupError("no plan")

    with pytest.raises(LookupError):
        asyncio.run(remember())
    events = captured.events("redis")
    assert [e["call"] for e in events] == ["redis HSET", "redis PIPELINE [HGETALL TTL]"]
    assert decode(events[1]["data"]["result"]) == [{"name": "Ann"}, -1]


def test_redis_pys_own_clock_reads_stay_real_and_unrecorded(captured, cache):
    """redis-py times every command with `time.monotonic()` inside the command FluxRun intercepts: its modules
    read the real clock (no FluxRun frame per read), nothing of it is recorded, and shutdown restores `time`."""
    import time

    import redis.asyncio.client
    import redis.asyncio.connection
    import redis.client
    import redis.connection

    readers = (redis.client, redis.connection, redis.asyncio.client, redis.asyncio.connection)
    real_monotonic = vars(time.monotonic).get("__wrapped__", time.monotonic)
    client = redis.Redis(host=cache.host, port=cache.port)

    @fluxrun.capture
    def lookup() -> None:
        client.set("clock:1", "a")
        client.get("clock:1")
        raise LookupError("stale")

    try:
        assert time.monotonic is not real_monotonic  # the app's own reads are patched
        with pytest.raises(LookupError):
            lookup()
        assert [e["call"] for e in captured.events() if e["kind"] in ("redis", "time")] == ["redis SET", "redis GET"]
        for module in readers:
            assert module.time.monotonic is real_monotonic and module.time.sleep is time.sleep
    finally:
        fluxrun.shutdown()
    assert all(module.time is time for module in readers)


def test_the_summary_names_redis_commands_never_keys_or_values(captured, cache):
    client = redis.Redis(host=cache.host, port=cache.port)

    @fluxrun.capture
    def store() -> None:
        client.set("token:s3cr3t-key", "s3cr3t-value")
        raise RuntimeError("stored")

    with pytest.raises(RuntimeError):
        store()
    (path,) = captured.files()
    summary = read_bundle(path.read_bytes()).summary
    assert [e["label"] for e in summary["events"] if e["kind"] == "redis"] == ["redis SET"]
    assert summary["counts"]["redis"] == 1
    assert "s3cr3t" not in json.dumps(summary)


def test_smtplib_mail_is_recorded_with_sender_recipients_and_message_never_the_password(captured, sink):
    @fluxrun.capture
    def welcome() -> None:
        with smtplib.SMTP(sink.host, sink.port) as smtp:
            smtp.ehlo()
            smtp.login("ann", PASSWORD)
            smtp.sendmail("app@example.com", ["ann@example.com"], "Subject: hi\r\n\r\nwelcome\r\n")
            message = EmailMessage()
            message["From"], message["To"], message["Subject"] = "app@example.com", "bob@example.com", "hey"
            message.set_content("second")
            smtp.send_message(message)
        raise RuntimeError("after mail")

    with pytest.raises(RuntimeError):
        welcome()
    assert [m["to"] for m in sink.messages] == [["ann@example.com"], ["bob@example.com"]]  # sent, live
    events = captured.events("smtp")
    assert [e["call"] for e in events] == [
        "smtp connect", "smtp ehlo", "smtp login", "smtp sendmail", "smtp send_message",
    ]  # fmt: skip
    connect, ehlo, login, sendmail, send_message = (e["data"] for e in events)
    assert (connect["host"], connect["port"]) == (sink.host, sink.port)
    assert decode(connect["result"])[0] == 220 and decode(ehlo["result"])[0] == 250
    assert login["user"] == "ann" and decode(login["result"])[0] == 235
    assert sendmail["from"] == "app@example.com" and sendmail["to"] == ["ann@example.com"]
    assert decode(sendmail["message"]) == b"Subject: hi\r\n\r\nwelcome\r\n"
    assert send_message["to"] == ["bob@example.com"] and b"second" in decode(send_message["message"])
    assert PASSWORD not in json.dumps(captured.one())  # not even in the encrypted payload


def test_aiosmtplib_send_is_recorded(captured, sink):
    @fluxrun.capture
    async def notify() -> None:
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = "app@example.com", "cy@example.com", "async"
        message.set_content("from aiosmtplib")
        await aiosmtplib.send(
            message, hostname=sink.host, port=sink.port, username="ann", password=PASSWORD, start_tls=False
        )
        raise RuntimeError("after mail")

    with pytest.raises(RuntimeError):
        asyncio.run(notify())
    assert [m["to"] for m in sink.messages] == [["cy@example.com"]]
    events = captured.events("smtp")
    assert [e["call"] for e in events] == ["smtp connect", "smtp send_message", "smtp quit"]
    connect, send_message, _quit = (e["data"] for e in events)
    assert connect["client"] == "aiosmtplib" and connect["user"] == "ann"
    assert send_message["to"] == ["cy@example.com"] and b"from aiosmtplib" in decode(send_message["message"])
    assert PASSWORD not in json.dumps(captured.one())


def test_outside_a_capture_redis_and_mail_run_untouched_and_nothing_is_recorded(captured, cache, sink):
    client = redis.Redis(host=cache.host, port=cache.port)
    client.set("plain", "1")
    assert client.get("plain") == b"1"
    with smtplib.SMTP(sink.host, sink.port) as smtp:
        smtp.sendmail("a@example.com", ["b@example.com"], "Subject: x\r\n\r\ny\r\n")
    assert len(sink.messages) == 1
    assert captured.files() == []
