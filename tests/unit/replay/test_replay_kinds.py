"""Replay serves every intercepted kind from the recording: values exactly, bodies never run, no network."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import time
import uuid
from datetime import datetime

import httpx
import pytest

import fluxrun
from fluxrun.replay import ReplayExpectationError

CALLS = {"charge": 0, "transport": 0}
MODE = {"version": "v1", "amount": 1200, "extra_fetch": False, "fixed": False, "sleep": 0.01}


def upstream(request: httpx.Request) -> httpx.Response:
    CALLS["transport"] += 1
    if request.url.path.endswith("/flaky"):
        return httpx.Response(429 if CALLS["transport"] == 1 else 200, json={"n": CALLS["transport"]})
    return httpx.Response(200, json={"price": 10, "path": request.url.path})


@fluxrun.boundary("payments.charge")
def charge_card(order_id: int, amount: int) -> dict:
    CALLS["charge"] += 1
    return {"charge": f"ch_{order_id}", "amount": amount}


@fluxrun.capture
def checkout(order_id: int) -> dict:
    currency = os.environ["SHOP_CURRENCY"]
    region = os.environ.get("SHOP_REGION", "none")
    stamp = time.time()
    when = datetime.now()
    jitter = random.random()
    token = uuid.uuid4()
    nonce = secrets.token_hex(4)
    charge = charge_card(order_id, amount=MODE["amount"])
    time.sleep(MODE["sleep"])  # a replay must not wait for this
    with httpx.Client(transport=httpx.MockTransport(upstream)) as client:
        first = client.get(f"https://pricing.test/{MODE['version']}/flaky")
        second = client.get(f"https://pricing.test/{MODE['version']}/flaky")
        if MODE["extra_fetch"]:
            client.post("https://pricing.test/audit", json={"order": order_id})
    if MODE["fixed"]:
        return {"ok": True}
    raise RuntimeError(
        f"{currency} {region} {stamp} {when.isoformat()} {jitter} {token} {nonce} {charge} "
        f"{first.status_code} {second.status_code}"
    )


@fluxrun.capture
async def async_checkout(order_id: int) -> None:
    async def fetch(client: httpx.AsyncClient, name: str) -> str:
        await asyncio.sleep(1)
        response = await client.get(f"https://pricing.test/items/{name}")
        return f"{name}:{response.json()['path']}:{time.time()}"

    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as client:
        results = await asyncio.gather(fetch(client, "a"), fetch(client, "b"), fetch(client, "c"))
    raise ValueError(" ".join(results))


@pytest.fixture(autouse=True)
def reset(monkeypatch):
    CALLS.update(charge=0, transport=0)
    MODE.update(version="v1", amount=1200, extra_fetch=False, fixed=False, sleep=0.01)
    monkeypatch.setenv("SHOP_CURRENCY", "EUR")
    monkeypatch.delenv("SHOP_REGION", raising=False)


@pytest.fixture
def bundle(captured):
    with pytest.raises(RuntimeError) as raised:
        checkout(42)
    (path,) = captured.files()
    fluxrun.shutdown()
    CALLS.update(charge=0, transport=0)
    return path, str(raised.value)


def test_every_kind_is_served_exactly_and_nothing_live_runs(captured, keys, monkeypatch):
    MODE["sleep"] = 1.5
    with pytest.raises(RuntimeError) as raised:
        checkout(42)
    (path,) = captured.files()
    fluxrun.shutdown()
    CALLS.update(charge=0, transport=0)
    original_message = str(raised.value)
    monkeypatch.setenv("SHOP_CURRENCY", "USD")  # changed since the capture: replay still sees EUR
    monkeypatch.setenv("SHOP_REGION", "eu")  # set now, absent then: replay still sees it absent
    started = time.monotonic()
    result = fluxrun.replay.run(path, keys.replay)
    assert time.monotonic() - started < 1.0  # the 1.5 s sleep returned at once
    assert result.outcome == "reproduced"
    assert result.new.message == original_message  # time, datetime, random, uuid, secrets, env, http: identical
    assert CALLS == {"charge": 0, "transport": 0}  # boundary body and transport never ran
    assert "429 200" in original_message  # the same request twice got its answers in order
    assert result.served == {"env": 2, "time": 2, "random": 3, "host": 1, "timer": 1, "http": 2}
    assert result.unconsumed == []


def test_replay_is_deterministic(bundle, keys):
    path, _ = bundle
    first = fluxrun.replay.run(path, keys.replay)
    second = fluxrun.replay.run(path, keys.replay)
    assert first.events == second.events and first.new == second.new


def test_a_fixed_outcome_passes_expect_fixed_and_fails_expect_reproduce(bundle, keys):
    path, _ = bundle
    MODE["fixed"] = True
    result = fluxrun.replay.run(path, keys.replay, expect="fixed")
    assert result.outcome == "fixed"
    with pytest.raises(ReplayExpectationError, match="expected the failure to reproduce, but it is fixed"):
        fluxrun.replay.run(path, keys.replay, expect="reproduce")


def test_a_different_url_is_a_divergence_with_a_diff(bundle, keys):
    path, _ = bundle
    MODE["version"] = "v2"
    with pytest.raises(fluxrun.ReplayDivergence) as raised:
        fluxrun.replay.run(path, keys.replay)
    message = str(raised.value)
    assert "GET https://pricing.test/v2/flaky has no recorded answer" in message
    assert "test_replay_kinds.py" in message and "in checkout" in message  # where the code made the call
    assert "next recorded http call: GET https://pricing.test/v1/flaky" in message
    assert "url differs" in message and "- https://pricing.test/v1/flaky" in message
    assert "+ https://pricing.test/v2/flaky" in message
    assert "replay got through 9 of 11 recorded calls" in message


def test_different_boundary_arguments_are_a_divergence(bundle, keys):
    path, _ = bundle
    MODE["amount"] = 999
    with pytest.raises(fluxrun.ReplayDivergence, match=r"(?s)payments.charge has no recorded answer.*arguments differ"):
        fluxrun.replay.run(path, keys.replay)
    assert CALLS["charge"] == 0


def test_an_extra_call_is_a_divergence_even_if_the_app_swallows_it(bundle, keys):
    path, _ = bundle
    MODE["extra_fetch"] = True
    with pytest.raises(fluxrun.ReplayDivergence, match=r"POST https://pricing\.test/audit has no recorded answer"):
        fluxrun.replay.run(path, keys.replay)


def test_calls_never_made_fail_reproduce_strictly_and_warn_when_lenient(captured, keys):
    MODE["extra_fetch"] = True
    with pytest.raises(RuntimeError):
        checkout(7)
    (path,) = captured.files()
    fluxrun.shutdown()
    MODE["extra_fetch"] = False
    with pytest.raises(ReplayExpectationError, match="1 recorded calls were never made") as raised:
        fluxrun.replay.run(path, keys.replay, expect="reproduce")
    assert raised.value.result.unconsumed[0]["call"] == "POST https://pricing.test/audit"
    lenient = fluxrun.replay.run(path, keys.replay, expect="reproduce", strict=False)
    assert lenient.warnings and "never made" in lenient.warnings[0]
    MODE["fixed"] = True
    fixed = fluxrun.replay.run(path, keys.replay, expect="fixed")  # a fix may rightly make fewer calls
    assert len(fixed.unconsumed) == 1


def test_gathered_tasks_are_served_within_their_own_task(captured, keys):
    with pytest.raises(ValueError) as raised:
        asyncio.run(async_checkout(1))
    (path,) = captured.files()
    fluxrun.shutdown()
    result = fluxrun.replay.run(path, keys.replay)
    assert result.outcome == "reproduced"
    assert result.new.message == str(raised.value)
    assert {task for _, _, task, _ in result.events} == {"0.1", "0.2", "0.3"}
    assert CALLS["transport"] == 3  # only the capture reached the transport


def test_replay_from_inside_a_running_loop(captured, keys):
    with pytest.raises(ValueError):
        asyncio.run(async_checkout(2))
    (path,) = captured.files()
    fluxrun.shutdown()

    async def inside():
        return fluxrun.replay.run(path, keys.replay)

    assert asyncio.run(inside()).outcome == "reproduced"


@fluxrun.capture
def dial(port: int) -> None:
    import socket

    if MODE["fixed"]:  # at replay only: a raw socket FluxRun cannot serve
        socket.create_connection(("127.0.0.1", port), timeout=1)
    raise RuntimeError("dial failed")


def test_live_io_is_blocked_and_named(captured, keys):
    with pytest.raises(RuntimeError):
        dial(9)
    (path,) = captured.files()
    fluxrun.shutdown()
    MODE["fixed"] = True
    with pytest.raises(fluxrun.LiveIOBlocked) as raised:
        fluxrun.replay.run(path, keys.replay)
    message = str(raised.value)
    # create_connection resolves first: an address needs no DNS, so the lookup is named as the connection it is for
    assert "replay blocked a connection to 127.0.0.1:9 made at" in message
    assert "test_replay_kinds.py" in message and "in dial" in message
    assert "@fluxrun.boundary" in message and "redis-py" in message  # what is intercepted, and what to do
    assert raised.value.host == "127.0.0.1"


@fluxrun.capture
def look_up(name: str) -> None:
    import socket

    if MODE["fixed"]:
        socket.gethostbyname(name)
    raise RuntimeError("looked up")


@fluxrun.capture
def resolve_back() -> None:
    import socket

    if MODE["fixed"]:
        socket.gethostbyaddr("127.0.0.1")
    raise RuntimeError("looked up")


@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "in-process"])
@pytest.mark.parametrize(
    ("function", "shown"),
    [(look_up, "DNS lookup of payments.internal"), (resolve_back, "reverse DNS lookup of 127.0.0.1")],
    ids=["gethostbyname", "gethostbyaddr"],
)
def test_every_dns_lookup_is_blocked_in_process_as_in_isolation(captured, keys, isolate, function, shown):
    with pytest.raises(RuntimeError):
        function("payments.internal") if function is look_up else function()
    (path,) = captured.files()
    fluxrun.shutdown()
    MODE["fixed"] = True
    with pytest.raises(fluxrun.LiveIOBlocked, match=f"replay blocked a {shown} made at"):
        fluxrun.replay.run(path, keys.replay, app=function, isolate=isolate)


@fluxrun.capture
def message_id() -> None:
    import email.utils

    raise RuntimeError(f"sent {email.utils.make_msgid()!r:.1}")  # its domain is this host's name: socket.getfqdn()


@pytest.mark.parametrize("isolate", [True, False], ids=["isolated", "in-process"])
def test_this_hosts_own_name_is_answered_at_replay_without_a_lookup(captured, keys, isolate):
    with pytest.raises(RuntimeError):
        message_id()
    (path,) = captured.files()
    fluxrun.shutdown()
    result = fluxrun.replay.run(path, keys.replay, app=message_id, isolate=isolate)
    assert result.outcome == "reproduced", result.summary()


@fluxrun.capture
def dial_socket(port: int) -> None:
    import socket

    if MODE["fixed"]:
        with socket.socket() as sock:
            sock.connect(("127.0.0.1", port))
    raise RuntimeError("dial failed")


def test_a_raw_connect_is_blocked(captured, keys):
    with pytest.raises(RuntimeError):
        dial_socket(9)
    (path,) = captured.files()
    fluxrun.shutdown()
    MODE["fixed"] = True
    with pytest.raises(
        fluxrun.LiveIOBlocked, match=r"replay blocked a connection to 127\.0\.0\.1 made at .*in dial_socket"
    ):
        fluxrun.replay.run(path, keys.replay)


def test_missing_key_and_missing_bundle_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("FLUXRUN_REPLAY_KEY", raising=False)
    with pytest.raises(fluxrun.FluxRunError, match="does not exist"):
        fluxrun.replay.run(tmp_path / "nope.fluxrun")
    (tmp_path / "x.fluxrun").write_bytes(b"FLXR")
    with pytest.raises(fluxrun.FluxRunError, match="set FLUXRUN_REPLAY_KEY"):
        fluxrun.replay.run(tmp_path / "x.fluxrun")


@fluxrun.capture
def configured() -> None:
    os.environ.get("SHOP_CURRENCY")
    if MODE["fixed"]:
        os.environ.get("SHOP_NEW_SETTING")  # read only by the new code
        time.perf_counter()  # a clock read the recording never saw
    raise RuntimeError("x")


def test_an_unrecorded_env_read_is_a_divergence(captured, keys):
    with pytest.raises(RuntimeError):
        configured()
    (path,) = captured.files()
    fluxrun.shutdown()
    MODE["fixed"] = True
    with pytest.raises(fluxrun.ReplayDivergence) as raised:
        fluxrun.replay.run(path, keys.replay)
    message = str(raised.value)
    assert "env SHOP_NEW_SETTING has no recorded answer" in message
    assert (
        "recorded env calls: env SHOP_CURRENCY" in message or "nearest recorded env call: env SHOP_CURRENCY" in message
    )


@fluxrun.capture
def read_the_region_often() -> None:
    regions = {os.environ.get("SHOP_REGION", "none") for _ in range(40)}
    raise LookupError(f"no shipping to {regions}")


def test_a_variable_read_many_times_counts_as_the_one_call_it_was_recorded_as(captured, keys):
    with pytest.raises(LookupError):
        read_the_region_often()
    (path,) = captured.files()
    fluxrun.shutdown()
    result = fluxrun.replay.run(path, keys.replay)
    assert result.outcome == "reproduced"
    assert result.served == {"env": 1} and result.recorded_calls == 1
    assert "served 1 of 1 recorded calls (1 env)" in result.summary()


@fluxrun.capture
def describe_order() -> None:
    raise RuntimeError(f"order handled by {object()!r}")  # an address: not IO, so not recorded, and never the same


def test_a_reproduced_failure_whose_message_differs_says_so(captured, keys):
    with pytest.raises(RuntimeError) as raised:
        describe_order()
    (path,) = captured.files()
    fluxrun.shutdown()
    result = fluxrun.replay.run(path, keys.replay, app=describe_order, isolate=False)
    assert result.outcome == "reproduced"  # the same type, from the same place
    (warning,) = result.warnings
    assert warning.startswith("the error's message differs from the recorded one:")
    assert str(raised.value) in warning and result.new.message in warning
    assert "warning: the error's message differs" in result.summary()
