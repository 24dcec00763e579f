"""Crash safety: SIGKILL the server mid-ingest, tear its WAL, restart — every acknowledged bundle is
queryable exactly once."""

from __future__ import annotations

import random
import threading
import time

import httpx
import pytest
from server_fixtures import Server
from server_process import wait_until
from servers import free_port

from fluxrun.bundle import load_capture_key, signing_public_key
from fluxrun_server.ingest.batch import encode_batch

pytestmark = pytest.mark.slow


@pytest.fixture
def fresh_server(tmp_path, keys):
    port = free_port()
    server = Server(
        f"http://127.0.0.1:{port}",
        {"FLUXRUN_SERVER_DATA_DIR": str(tmp_path / "data"), "FLUXRUN_SERVER_PORT": str(port)},
        tmp_path / "data",
        "embedded",
    )
    server.admin("create-workspace", "acme")
    server.admin("create-project", "acme", "shop")
    key_id, public = signing_public_key(load_capture_key(keys.capture))
    server.admin("add-key", "acme/shop", f"{key_id}:{public}")
    server.tokens["ingest"] = server.admin("create-token", "acme/shop")
    server.tokens["api"] = server.admin("create-api-key", "acme", "triager")
    yield server
    server.close()


def all_runs(server: Server) -> list[str]:
    headers = {"authorization": f"Bearer {server.tokens['api']}"}
    project = httpx.get(f"{server.url}/v1/projects", headers=headers).json()["projects"][0]["id"]
    seen, cursor = [], None
    while True:
        params = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{server.url}/v1/projects/{project}/runs", params=params, headers=headers, timeout=30).json()
        seen.extend(r["bundle_id"] for r in page["runs"])
        cursor = page["next_cursor"]
        if cursor is None:
            return seen


def test_sigkill_mid_ingest_and_a_torn_wal_lose_no_acknowledged_bundle(fresh_server, seal):
    server = fresh_server
    server.start()
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def shipper() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                batch = [seal(fingerprint=f"fp-{random.randint(0, 5)}") for _ in range(5)]
                try:
                    response = client.post(
                        f"{server.url}/v1/executions",
                        content=encode_batch([b for _, b in batch]),
                        headers={"authorization": f"Bearer {server.tokens['ingest']}"},
                    )
                except httpx.TransportError:
                    return  # the server is gone: whatever was not acknowledged may be lost
                if response.status_code == 202:
                    with lock:
                        acknowledged.extend(response.json()["accepted"])

    threads = [threading.Thread(target=shipper) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(random.uniform(0.8, 2.0))
    server.stop(kill=True)  # SIGKILL, at a random moment
    stop.set()
    for thread in threads:
        thread.join(30)
    assert len(acknowledged) > 20, "the shippers should have been acknowledged a few times before the kill"

    segments = sorted((server.data_dir / "wal").glob("wal-*.log"))
    with open(segments[-1], "ab") as tail:  # a torn write: half a frame at the end of the log
        tail.write(b"\x00\x01garbage-from-a-torn-write")

    server.start()
    assert wait_until(lambda: len(set(all_runs(server))) >= len(set(acknowledged)), timeout=60)
    stored = all_runs(server)
    assert set(acknowledged) <= set(stored)
    assert len(stored) == len(set(stored)), "a bundle was stored twice"
    health = httpx.get(f"{server.url}/healthz").json()
    assert health["status"] == "ok"
