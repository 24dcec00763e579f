"""A FastAPI app under uvicorn making real httpx calls to a second local server, captured end to end."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from servers import uvicorn_process

from fluxrun.bundle import open_bundle, read_bundle

pytestmark = pytest.mark.slow


def wait_for_bundles(directory: Path, count: int, timeout: float = 15.0) -> list[Path]:
    deadline = time.monotonic() + timeout
    while True:
        files = sorted(directory.glob("*.fluxrun")) if directory.exists() else []
        if len(files) >= count or time.monotonic() > deadline:
            return files
        time.sleep(0.05)


@pytest.fixture(scope="module")
def shop(tmp_path_factory, keys):
    bundles = tmp_path_factory.mktemp("shop-bundles")
    with uvicorn_process("upstream_app:app") as upstream:
        env = {
            "FLUXRUN_CAPTURE_KEY": str(keys.capture),
            "FLUXRUN_DIR": str(bundles),
            "SHOP_UPSTREAM": upstream,
            "SHOP_CURRENCY": "USD",
        }
        with uvicorn_process("shop_app:app", env) as url:
            yield url, bundles


def test_fifty_concurrent_failing_requests_are_recorded_without_mixing(shop, keys):
    url, bundles = shop
    before = len(list(bundles.glob("*.fluxrun")))
    ids = [i * 10 + 7 for i in range(50)]  # skus ending in 7: the upstream answers an unexpected payload

    async def hammer():
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            return await asyncio.gather(*(client.get(f"/orders/{i}") for i in ids))

    responses = asyncio.run(hammer())
    assert {r.status_code for r in responses} == {500}
    files = wait_for_bundles(bundles, before + 50)
    payloads = [open_bundle(p.read_bytes(), keys.replay_key).payload for p in files]
    mine = [p for p in payloads if p["request"]["path"].startswith("/orders/")]
    assert sorted(int(p["request"]["path"].rsplit("/", 1)[1]) for p in mine) == ids
    for payload in mine:
        order_id = int(payload["request"]["path"].rsplit("/", 1)[1])
        # httpx reads SSL_CERT_FILE/SSL_CERT_DIR while building its client: real IO of the request, kept too
        # the env snapshot also holds what the libraries read (httpx's proxy walk, SSL_CERT_*): the app's own is one
        events = [e for e in payload["events"] if e["kind"] != "env" or e["call"] == "env SHOP_CURRENCY"]
        assert [e["kind"] for e in events] == ["host", "env", "http", "log"], events
        host, env, http, log = events
        assert host["data"]["args"] == [order_id]
        assert env["data"] == {"key": "SHOP_CURRENCY", "present": True, "value": "USD"}
        assert http["data"]["request"]["url"].endswith(f"/price/sku-{order_id}")
        assert ["x-order", str(order_id)] in http["data"]["request"]["headers"]
        assert http["data"]["response"]["status"] == 200
        assert "schema changed" in http["data"]["response"]["body"]["text"]
        assert log["data"]["message"] == f"priced order {order_id}"
        assert payload["outcome"]["error"]["type"] == "builtins:KeyError"
        assert payload["outcome"]["status"] == 500
        assert payload["request"]["route"] == "/orders/{order_id}"
        assert payload["entry"] == "shop_app:app"
    fingerprints = {p["outcome"]["error"]["fingerprint"] for p in mine}
    assert len(fingerprints) == 1


def test_successful_requests_are_not_kept(shop):
    url, bundles = shop
    before = len(list(bundles.glob("*.fluxrun")))
    for i in (1, 2, 3):
        assert httpx.get(f"{url}/orders/{i}").status_code == 200
    assert httpx.get(f"{url}/orders/27").status_code == 500
    files = wait_for_bundles(bundles, before + 1)
    time.sleep(0.3)
    assert len(list(bundles.glob("*.fluxrun"))) == before + 1 == len(files)


def test_a_5xx_answer_is_kept_with_bodies_and_the_summary_is_scrubbed(shop, keys):
    url, bundles = shop
    before = set(bundles.glob("*.fluxrun"))
    card = "4111 1111 1111 1111"
    response = httpx.post(
        f"{url}/checkout?token=s3cr3t-value",
        json={"card": card, "password": "hunter2"},
        headers={
            "authorization": "Bearer abc.def.ghi",
            "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        },
    )
    assert response.status_code == 502
    (path,) = set(wait_for_bundles(bundles, len(before) + 1)) - before
    data = path.read_bytes()
    summary = read_bundle(data).summary
    assert summary["status"] == 502 and summary["outcome"] == "http_5xx"
    assert summary["trace_id"] == "a" * 32
    assert summary["route"] == "/checkout"
    # whole secrets only: a short one ("4111") turns up by chance in a timestamp or the ciphertext
    for secret in (b"s3cr3t-value", b"hunter2", card.encode(), card.replace(" ", "").encode(), b"abc.def.ghi"):
        assert secret not in data  # not in the summary, and the payload is ciphertext
    payload = open_bundle(data, keys.replay_key).payload
    assert payload["request"]["method"] == "POST"
    assert '"password": "hunter2"' in payload["request"]["body"]["text"].replace('":"', '": "')
    assert payload["outcome"]["response"]["body"]["text"] == f'{{"error":"card {card} declined"}}'
