"""Redis commands and mail are answered from the recording at replay: nothing reaches the real services.

The scenario runs as requests in a real uvicorn process (tests/integration/apps/cache_mail_app.py) against a
real `redis-server` and an aiosmtpd sink; the replays then run here, isolated and in-process, with the
services up (their Redis command stats and the sink are compared before and after) and with them stopped.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import sys
import time
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import httpx
import pytest
import redis
from redis_server import redis_server
from servers import APPS, uvicorn_process
from smtp_sink import smtp_sink

import fluxrun

pytestmark = pytest.mark.slow
MAIL_PASSWORD = "right-password"


def wait_for_bundles(directory: Path, count: int, timeout: float = 15.0) -> list[Path]:
    deadline = time.monotonic() + timeout
    while True:
        files = sorted(directory.glob("*.fluxrun"), key=lambda p: p.stat().st_mtime_ns) if directory.exists() else []
        if len(files) >= count or time.monotonic() > deadline:
            return files
        time.sleep(0.05)


def capture_signups(tmp_path: Path, keys, cache, sink) -> dict[str, Path]:
    """Run both failing signups as requests in a real server process; their bundles by route."""
    bundles = tmp_path / "bundles"
    env = {
        "FLUXRUN_CAPTURE_KEY": str(keys.capture),
        "FLUXRUN_DIR": str(bundles),
        "CACHE_REDIS_URL": cache.url,
        "MAIL_HOST": sink.host,
        "MAIL_PORT": str(sink.port),
        "MAIL_PASSWORD": MAIL_PASSWORD,
    }
    with uvicorn_process("cache_mail_app:app", env) as url:
        assert httpx.post(f"{url}/signup/ann", timeout=30).status_code == 500
        assert httpx.post(f"{url}/async-signup/bob", timeout=30).status_code == 500
        files = wait_for_bundles(bundles, 2)
    assert len(files) == 2
    return {"sync": files[0], "async": files[1]}


@pytest.fixture(scope="module")
def app_module():
    sys.path.insert(0, str(APPS))
    import cache_mail_app

    return cache_mail_app


@pytest.fixture
def services():
    with redis_server() as cache, smtp_sink() as sink:
        yield cache, sink


@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "in-process"])
def test_replays_reproduce_and_leave_redis_stats_and_the_mail_sink_exactly_as_before(
    tmp_path, keys, services, app_module, isolate
):
    cache, sink = services
    bundles = capture_signups(tmp_path, keys, cache, sink)
    assert len(sink.messages) == 2 and sink.logins == ["signup-bot"]  # the capture sent them for real
    assert cache.raw("GET", "signups") == b"2"
    stats = cache.command_stats()
    messages = list(sink.messages)
    for route, path in bundles.items():
        result = fluxrun.replay.run(path, keys.replay, app=app_module.app, isolate=isolate)
        assert result.outcome == "reproduced", (route, result.summary())
        assert result.new.error_type == "builtins:TypeError"
        assert result.served["redis"] == 4, result.served  # set, incr, the pipeline, get
        assert result.served["smtp"] >= 2, result.served
        assert [e["call"] for e in result.unconsumed if e["kind"] in ("redis", "smtp")] == []
    after = cache.command_stats()
    assert after.pop("info") == stats.pop("info", 0) + 1  # only the INFO that read the stats before
    assert after == stats  # no command reached Redis during the replays
    assert sink.messages == messages  # no mail was sent again
    assert cache.raw("GET", "signups") == b"2"


def test_replays_reproduce_with_redis_and_the_mail_server_stopped(tmp_path, keys, app_module):
    with redis_server() as cache, smtp_sink() as sink:
        bundles = capture_signups(tmp_path, keys, cache, sink)
    with pytest.raises(redis.ConnectionError):  # stopped: nothing answers on its port any more
        redis.Redis.from_url(cache.url).ping()
    with pytest.raises(OSError):
        smtplib.SMTP(sink.host, sink.port, timeout=2)
    for isolate in (True, False):
        for route, path in bundles.items():
            result = fluxrun.replay.run(path, keys.replay, app=app_module.app, isolate=isolate)
            assert result.outcome == "reproduced", (route, isolate, result.summary())


# -- matching, in this process ------------------------------------------------------------------------------
MODE = {"user": "1", "to": "ann@example.com", "fixed": False}


@pytest.fixture
def cache():
    with redis_server() as server:
        yield server


@pytest.fixture
def sink():
    with smtp_sink() as server:
        yield server


def make_profile(cache_url: str, mail_port: int) -> None:
    client = redis.Redis.from_url(cache_url)
    client.set(f"user:{MODE['user']}", "ann")
    try:
        client.incr(f"user:{MODE['user']}")
    except redis.ResponseError as exc:  # the recorded error, raised again as the same class
        note = f"not a counter: {exc}"
    with smtplib.SMTP("127.0.0.1", mail_port) as smtp:
        smtp.ehlo()
        if smtp.has_extn("auth"):  # the recorded EHLO's extensions hold at replay
            smtp.login("ann", MAIL_PASSWORD)
        smtp.sendmail("app@example.com", [MODE["to"]], "Subject: hi\r\n\r\nhello\r\n")
    if not MODE["fixed"]:
        raise RuntimeError(note)


@pytest.fixture
def recorded(captured, cache, sink):
    MODE.update(user="1", to="ann@example.com", fixed=False)

    @fluxrun.capture
    def profile() -> None:
        make_profile(cache.url, sink.port)

    with pytest.raises(RuntimeError, match="not a counter"):
        profile()
    (path,) = captured.files()
    fluxrun.shutdown()
    yield path, profile
    MODE.update(user="1", to="ann@example.com", fixed=False)


def test_a_recorded_redis_error_is_raised_again_as_the_same_class(recorded, keys, cache, sink):
    path, profile = recorded
    before = cache.command_stats()
    result = fluxrun.replay.run(path, keys.replay, app=profile, isolate=False)
    assert result.outcome == "reproduced"
    assert "value is not an integer" in result.new.message
    assert (result.served["redis"], result.served["smtp"]) == (2, 4)  # set, incr; connect, ehlo, login, sendmail
    assert len(sink.messages) == 1
    after = cache.command_stats()
    assert after.pop("info") == before.pop("info", 0) + 1 and after == before


def test_a_different_redis_command_is_a_divergence_showing_both(recorded, keys):
    path, profile = recorded
    MODE["user"] = "2"
    with pytest.raises(fluxrun.ReplayDivergence) as raised:
        fluxrun.replay.run(path, keys.replay, app=profile, isolate=False)
    message = str(raised.value)
    assert "redis SET has no recorded answer" in message
    assert "in make_profile" in message  # the app's line, not redis-py's
    assert "next recorded redis call: redis SET" in message
    assert "- ['SET', 'user:1', 'ann']" in message and "+ ['SET', 'user:2', 'ann']" in message


def test_mail_to_another_recipient_is_a_divergence_showing_both(recorded, keys, sink):
    path, profile = recorded
    MODE["to"] = "eve@example.com"
    with pytest.raises(fluxrun.ReplayDivergence) as raised:
        fluxrun.replay.run(path, keys.replay, app=profile)
    message = str(raised.value)
    assert "smtp sendmail has no recorded answer" in message
    assert "- ['ann@example.com']" in message and "+ ['eve@example.com']" in message
    assert len(sink.messages) == 1  # only the capture's


def test_a_fix_replays_as_fixed_without_sending(recorded, keys, sink):
    path, profile = recorded
    MODE["fixed"] = True
    assert fluxrun.replay.run(path, keys.replay, app=profile).outcome == "fixed"
    assert len(sink.messages) == 1


def test_smtp_ssl_built_at_replay_makes_no_reverse_dns_lookup(captured, sink, keys):
    @fluxrun.capture
    def probe() -> None:
        try:
            smtp = smtplib.SMTP_SSL(timeout=5)  # no host: built without connecting, its local name looked up
            smtp.connect(sink.host, sink.port)  # the sink speaks plain SMTP: the TLS handshake fails
        except (OSError, ValueError, smtplib.SMTPException) as exc:
            raise RuntimeError(f"no TLS: {type(exc).__name__}") from exc

    with pytest.raises(RuntimeError) as raised:
        probe()
    (path,) = captured.files()
    fluxrun.shutdown()
    result = fluxrun.replay.run(path, keys.replay, app=probe)  # isolated: a reverse lookup would be blocked
    assert result.outcome == "reproduced", result.summary()
    assert result.new.message == str(raised.value)


@fluxrun.capture
def single_connection_visits(url: str) -> None:
    client = redis.Redis.from_url(url, single_connection_client=True)  # connects while it is built
    try:
        client.set("visits", 41)
        visits = client.incr("visits")
    finally:
        client.close()
    raise RuntimeError(f"visit {visits}")


@fluxrun.capture
async def single_connection_visits_async(url: str) -> None:
    import redis.asyncio

    async with redis.asyncio.Redis.from_url(url, single_connection_client=True) as client:  # connects on entry
        await client.set("visits", 41)
        visits = await client.incr("visits")
    raise RuntimeError(f"visit {visits}")


@pytest.mark.parametrize("function", [single_connection_visits, single_connection_visits_async], ids=["sync", "async"])
def test_a_single_connection_client_replays_without_connecting(captured, keys, cache, function):
    reproduces_without_a_command(captured, keys, cache, function, "visit 42")


def reproduces_without_a_command(captured, keys, cache, function, message: str) -> None:
    """Capture `function(cache.url)` (sync or async) failing with `message`, then replay it in this process:
    it reproduces, and Redis saw no connection and no command (its stats move only by the INFO that reads them)."""
    with pytest.raises(RuntimeError, match=re.escape(message)):
        outcome = function(cache.url)
        if asyncio.iscoroutine(outcome):
            asyncio.run(outcome)
    (path,) = captured.files()
    before = cache.command_stats()
    result = fluxrun.replay.run(path, keys.replay, app=function, isolate=False)
    assert result.outcome == "reproduced", result.summary()
    assert result.new.message == message
    after = cache.command_stats()
    assert after.pop("info") == before.pop("info", 0) + 1 and after == before  # no connection, no command


@fluxrun.capture
def book_seat(url: str) -> None:
    client, other = redis.Redis.from_url(url), redis.Redis.from_url(url)
    client.set("seats", 3)
    seen: list[int] = []

    def take(pipe: redis.client.Pipeline) -> None:
        seats = int(pipe.get("seats"))
        seen.append(seats)
        if len(seen) == 1:
            other.decr("seats")  # another writer between WATCH and EXEC: EXEC raises WatchError, and it retries
        pipe.multi()
        pipe.set("seats", seats - 1)

    try:
        client.transaction(take, "seats")
    finally:
        client.close()
        other.close()
    raise RuntimeError(f"seats seen {seen}")


@fluxrun.capture
async def book_seat_async(url: str) -> None:
    import redis.asyncio

    client, other = redis.asyncio.Redis.from_url(url), redis.asyncio.Redis.from_url(url)
    await client.set("seats", 3)
    seen: list[int] = []
    try:
        async with client.pipeline() as pipe:
            while True:
                try:
                    await pipe.watch("seats")
                    seats = int(await pipe.get("seats"))
                    seen.append(seats)
                    if len(seen) == 1:
                        await other.decr("seats")
                    pipe.multi()
                    pipe.set("seats", seats - 1)
                    await pipe.execute()
                    break
                except redis.WatchError:
                    continue  # EXEC failed: redis-py's execute reset the pipeline, and the replay's must too
    finally:
        await client.aclose()
        await other.aclose()
    raise RuntimeError(f"seats seen {seen}")


@pytest.mark.parametrize("function", [book_seat, book_seat_async], ids=["sync", "async"])
def test_an_optimistic_transaction_retried_after_a_watch_error_replays(captured, keys, cache, function):
    reproduces_without_a_command(captured, keys, cache, function, "seats seen [3, 2]")


def invoice(to: str) -> EmailMessage:
    """A message as apps build them: a Message-ID for this host, and a PDF attached (a random MIME boundary)."""
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "billing@example.com", to, "Your invoice"
    message["Message-ID"] = make_msgid()  # its domain is this host's name: `socket.getfqdn()`
    message.set_content("Your invoice is attached.")
    message.add_attachment(b"%PDF-1.4 invoice", maintype="application", subtype="pdf", filename="invoice.pdf")
    return message


@fluxrun.capture
def send_invoice(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        smtp.send_message(invoice(MODE["to"]))
    raise RuntimeError("invoice sent, then the ledger failed")


@fluxrun.capture
async def send_invoice_async(port: int) -> None:
    import aiosmtplib

    await aiosmtplib.send(invoice(MODE["to"]), hostname="127.0.0.1", port=port)
    raise RuntimeError("invoice sent, then the ledger failed")


@pytest.mark.parametrize("function", [send_invoice, send_invoice_async], ids=["smtplib", "aiosmtplib"])
@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "in-process"])
def test_a_message_with_an_attachment_replays_without_sending(captured, keys, sink, function, isolate):
    MODE["to"] = "ann@example.com"
    with pytest.raises(RuntimeError, match="ledger failed"):
        outcome = function(sink.port)
        if asyncio.iscoroutine(outcome):
            asyncio.run(outcome)
    (path,) = captured.files()
    fluxrun.shutdown()
    result = fluxrun.replay.run(path, keys.replay, app=function, isolate=isolate)
    assert result.outcome == "reproduced", result.summary()
    assert len(sink.messages) == 1  # only the capture's
    MODE["to"] = "eve@example.com"  # the same message to someone else is still a divergence
    with pytest.raises(fluxrun.ReplayDivergence, match=r"eve@example\.com"):
        fluxrun.replay.run(path, keys.replay, app=function, isolate=isolate)
    MODE["to"] = "ann@example.com"


def slow_queue_poll(url: str) -> str:
    """A Redis call that takes 0.3 s at capture (a blocking pop that times out): it ends after the fetch beside it."""
    client = redis.Redis.from_url(url)
    try:
        return f"queue {client.blpop(['jobs:none'], timeout=0.3)}"
    finally:
        client.close()


def quick_fetch(url: str) -> str:
    with httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200, json={"ok": 1}))) as http:
        return f"fetch {http.get('https://status.test/ok').json()['ok']}"


@fluxrun.capture
def poll_races_fetch(url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor, as_completed

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(slow_queue_poll, url), pool.submit(quick_fetch, url)]
        order = [future.result() for future in as_completed(futures)]
    raise RuntimeError(f"first came {order[0]}")


def test_a_redis_reply_and_a_fetch_in_other_threads_come_back_in_the_recorded_order(captured, keys, cache):
    """Redis replies carry their completion number (as every call `fluxrun.interceptors.api.record` records)."""
    with pytest.raises(RuntimeError, match="first came fetch 1"):
        poll_races_fetch(cache.url)
    (path,) = captured.files()
    for _ in range(5):
        result = fluxrun.replay.run(path, keys.replay, app=poll_races_fetch, isolate=False)
        assert result.outcome == "reproduced", result.summary()
        assert result.new.message == "first came fetch 1"
