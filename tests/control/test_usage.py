"""Usage counters, plans and their enforcement on ingest: daily quota (429 with a reason), payload limit,
per-project rate limit with the fairness check (one project floods, the other's success rate and latency
hold). On SQLite and on PostgreSQL."""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import httpx
import pytest
from control_helpers import BACKENDS, Server, project_ids, provision, wait_until


def usage_of(server: Server, project_id: int) -> dict[str, Any]:
    response = server.api("viewer", "/v1/usage", project_id=project_id)
    assert response.status_code == 200, response.text
    (project,) = response.json()["usage"]
    return project


@pytest.mark.parametrize("backend", BACKENDS)
def test_daily_quota_payload_limit_and_usage_counters(backend: str, make_server: Any, keys: Any, seal: Any) -> None:
    server: Server = make_server(backend)
    provision(server, keys.capture)
    server.out("create-plan", "tiny", "--bundles-per-day", "5")
    server.out("set-plan", "acme/shop", "tiny")
    server.out("create-plan", "small-bundles", "--max-payload-bytes", "6000")
    server.out("set-plan", "acme/web", "small-bundles")
    server.start()
    ids = project_ids(server)

    first = server.ingest(server.keys["ingest"], [seal()[1] for _ in range(3)])
    assert first.status_code == 202 and len(first.json()["accepted"]) == 3
    second = server.ingest(server.keys["ingest"], [seal()[1] for _ in range(4)])
    assert second.status_code == 202
    assert len(second.json()["accepted"]) == 2
    assert [r["reason"] for r in second.json()["rejected"]] == ["quota_exceeded", "quota_exceeded"]
    spent = server.ingest(server.keys["ingest"], [seal()[1]])
    assert spent.status_code == 429
    assert "quota_exceeded" in spent.json()["detail"] and "daily quota of 5 bundles" in spent.json()["detail"]
    assert "'tiny'" in spent.json()["detail"] and int(spent.headers["retry-after"]) > 0
    garbage = server.ingest(server.keys["ingest_web"], [b"not a bundle at all"])
    assert garbage.status_code == 202 and garbage.json()["rejected"]
    bad_reason = garbage.json()["rejected"][0]["reason"]

    # another project is not held to acme/shop's quota; its own plan limits bundle size
    web = server.ingest(
        server.keys["ingest_web"], [seal(project="acme/web")[1], seal(size=8000, project="acme/web")[1]]
    )
    assert web.status_code == 202 and len(web.json()["accepted"]) == 1
    assert web.json()["rejected"][0]["reason"] == "payload_too_large"

    # On PostgreSQL the accepted count is reserved in the database at once; bytes and rejections land with the
    # flushes. The last refusal (the 429) was counted after every byte, so once it shows, all of them have.
    shop = wait_until(
        lambda: (
            (u := usage_of(server, ids["shop"]))["days"]
            and u["days"][0]["accepted"] == 5
            and u["days"][0]["rejected"] == {"quota_exceeded": 3}
            and u
        )
    )
    assert shop, usage_of(server, ids["shop"])
    day = shop["days"][0]
    assert shop["plan"] == "tiny" and day["bytes"] > 5 * 500
    expected_web = (1, {bad_reason: 1, "payload_too_large": 1})  # two batches: counters may land in two flushes
    web_day = wait_until(
        lambda: (d := usage_of(server, ids["web"])["days"]) and (d[0]["accepted"], d[0]["rejected"]) == expected_web
    )
    assert web_day, usage_of(server, ids["web"])
    query = "query($p: Int!) { usage(projectId: $p) { accepted bytes rejected rejectedTotal } }"
    graphql = server.gql("viewer", query, p=ids["shop"])["usage"]
    assert graphql == [{"accepted": 5, "bytes": day["bytes"], "rejected": {"quota_exceeded": 3}, "rejectedTotal": 3}]

    # the count is in the database: a restarted server still refuses
    server.stop()
    server.start()
    again = server.ingest(server.keys["ingest"], [seal()[1]])
    assert again.status_code == 429 and "quota_exceeded" in again.json()["detail"]


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[18] if len(values) >= 2 else values[0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_rate_limit_keeps_one_flooding_project_from_starving_another(
    backend: str, make_server: Any, keys: Any, seal: Any
) -> None:
    server: Server = make_server(backend)
    provision(server, keys.capture)
    server.out("create-plan", "fair", "--rate", "20", "--burst", "20")
    server.out("set-plan", "acme/shop", "fair")
    server.out("set-plan", "acme/web", "fair")
    server.start()
    ids = project_ids(server)
    quiet_bundles = [seal(project="acme/web")[1] for _ in range(80)]
    noisy_bundles = [seal()[1] for _ in range(50)]

    def quiet(seconds: float, out: list[tuple[int, float]]) -> None:
        with httpx.Client(timeout=30) as client:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                bundle = quiet_bundles.pop()
                start = time.perf_counter()
                response = client.post(
                    server.url + "/v1/executions",
                    content=len(bundle).to_bytes(4, "big") + bundle,
                    headers={"authorization": f"Bearer {server.keys['ingest_web']}"},
                )
                out.append((response.status_code, time.perf_counter() - start))
                time.sleep(0.1)  # 10 bundles per second: half the plan's rate

    baseline: list[tuple[int, float]] = []
    quiet(2.0, baseline)

    stop = threading.Event()
    noisy_status: list[int] = []
    batch = b"".join(len(b).to_bytes(4, "big") + b for b in noisy_bundles[:5])

    def flood() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                response = client.post(
                    server.url + "/v1/executions",
                    content=batch,
                    headers={"authorization": f"Bearer {server.keys['ingest']}"},
                )
                noisy_status.append(response.status_code)

    flooders = [threading.Thread(target=flood) for _ in range(6)]
    started = time.monotonic()
    for thread in flooders:
        thread.start()
    time.sleep(0.3)
    during: list[tuple[int, float]] = []
    quiet(3.0, during)
    stop.set()
    for thread in flooders:
        thread.join()
    elapsed = time.monotonic() - started

    accepted_requests = noisy_status.count(202)
    limited = noisy_status.count(429)
    assert limited > accepted_requests, (accepted_requests, limited)  # the flood was held back...
    # ...to the plan's rate plus the burst, plus what the 6 flooders had in flight (admitted, not yet charged)
    assert accepted_requests * 5 <= 20 * elapsed + 20 + 6 * 5
    assert all(status == 202 for status, _ in during), [s for s, _ in during]  # the quiet project kept its share
    base_p95 = _p95([t for _, t in baseline])
    flood_p95 = _p95([t for _, t in during])
    print(
        f"\n{backend}: quiet p95 {base_p95 * 1000:.1f} ms alone, {flood_p95 * 1000:.1f} ms during the flood; "
        f"noisy {accepted_requests} accepted / {limited} limited requests in {elapsed:.1f} s"
    )
    assert flood_p95 <= max(5 * base_p95, base_p95 + 0.25), (base_p95, flood_p95)

    detail = server.ingest(server.keys["ingest"], [noisy_bundles[0]] * 30)
    while detail.status_code == 202:
        detail = server.ingest(server.keys["ingest"], [noisy_bundles[0]] * 30)
    assert detail.status_code == 429 and "rate_limited" in detail.json()["detail"]
    assert int(detail.headers["retry-after"]) >= 1
    assert wait_until(lambda: usage_of(server, ids["shop"])["days"][0]["rejected"].get("rate_limited", 0) >= limited)
