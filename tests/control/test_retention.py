"""Retention: the background job deletes runs, emptied issues and payload segments past the plan's retention,
keeps everything younger (and every project without a retention limit), and the usage counters show it.
On SQLite and on PostgreSQL."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from control_helpers import BACKENDS, Server, project_ids, provision, wait_until


def segments(server: Server) -> list[Path]:
    return sorted((server.data_dir / "objects").rglob("*.seg"))


def runs(server: Server, project_id: int) -> set[str]:
    response = server.api("viewer", f"/v1/projects/{project_id}/runs", limit=500)
    assert response.status_code == 200, response.text
    return {r["bundle_id"] for r in response.json()["runs"]}


def issues(server: Server, project_id: int) -> set[str]:
    response = server.api("viewer", f"/v1/projects/{project_id}/issues")
    return {i["fingerprint"] for i in response.json()["issues"]}


def usage_day(server: Server, project_id: int) -> dict[str, Any]:
    days = server.api("viewer", "/v1/usage", project_id=project_id).json()["usage"][0]["days"]
    return days[-1] if days else {}


@pytest.mark.parametrize("backend", BACKENDS)
def test_retention_deletes_old_runs_issues_and_payloads_and_usage_shows_it(
    backend: str, make_server: Any, keys: Any, seal: Any
) -> None:
    server: Server = make_server(backend, retention_interval_s="0.3")
    provision(server, keys.capture)
    server.out("create-plan", "short", "--retention-days", "2")
    server.out("set-plan", "acme/shop", "short")
    server.start()
    ids = project_ids(server)
    old_time = datetime.now(UTC) - timedelta(days=5)

    old = [seal(fingerprint="fp-old", started_at=old_time, size=2000) for _ in range(3)]
    assert server.ingest(server.keys["ingest"], [b for _, b in old]).status_code == 202
    deleted = wait_until(lambda: usage_day(server, ids["shop"]).get("deleted") == 3, timeout=20)
    assert deleted, usage_day(server, ids["shop"])
    day = usage_day(server, ids["shop"])
    assert day["accepted"] == 3 and day["deleted_bytes"] >= 3 * 2000
    assert wait_until(lambda: segments(server) == [], timeout=10), segments(server)  # the payloads are gone too
    assert runs(server, ids["shop"]) == set() and "fp-old" not in issues(server, ids["shop"])
    gone = server.api("viewer", f"/v1/runs/{old[0][0]}/bundle")
    assert gone.status_code == 404

    # younger runs stay; so does a project whose plan keeps everything
    fresh = [seal(fingerprint="fp-fresh") for _ in range(2)]
    assert server.ingest(server.keys["ingest"], [b for _, b in fresh]).status_code == 202
    web_old_id, web_old = seal(fingerprint="fp-web-old", started_at=old_time, project="acme/web")
    assert server.ingest(server.keys["ingest_web"], [web_old]).status_code == 202
    assert wait_until(lambda: runs(server, ids["shop"]) == {b for b, _ in fresh}, timeout=15)
    assert wait_until(lambda: runs(server, ids["web"]) == {web_old_id}, timeout=15)
    time.sleep(1.5)  # several retention passes
    assert runs(server, ids["shop"]) == {b for b, _ in fresh} and issues(server, ids["shop"]) == {"fp-fresh"}
    assert runs(server, ids["web"]) == {web_old_id}
    assert len(segments(server)) >= 1
    bundle = server.api("viewer", f"/v1/runs/{fresh[0][0]}/bundle")
    assert bundle.status_code == 200 and bundle.content == fresh[0][1]
    assert usage_day(server, ids["shop"])["deleted"] == 3 and usage_day(server, ids["web"]).get("deleted", 0) == 0
    query = "query($p: Int!) { usage(projectId: $p) { accepted deleted deletedBytes } }"
    (row,) = server.gql("viewer", query, p=ids["shop"])["usage"]
    assert row["accepted"] == 5 and row["deleted"] == 3 and row["deletedBytes"] == day["deleted_bytes"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_retention_of_one_project_keeps_another_projects_run_with_the_same_id(
    backend: str, make_server: Any, keys: Any, seal: Any
) -> None:
    """Bundle ids are unique within a project only: deleting acme/shop's old run X leaves acme/web's run X."""
    server: Server = make_server(backend, retention_interval_s="0.3")
    provision(server, keys.capture)
    server.out("create-plan", "short", "--retention-days", "2")
    server.out("set-plan", "acme/shop", "short")  # acme/web keeps everything
    server.start()
    ids = project_ids(server)
    old_time = datetime.now(UTC) - timedelta(days=5)
    twin_id, web_twin = seal(fingerprint="fp-web-twin", started_at=old_time, project="acme/web")
    assert server.ingest(server.keys["ingest_web"], [web_twin]).json()["accepted"] == [twin_id]
    assert wait_until(lambda: runs(server, ids["web"]) == {twin_id}, timeout=15)
    _, shop_twin = seal(fingerprint="fp-shop-twin", started_at=old_time, bundle_id=twin_id)
    assert server.ingest(server.keys["ingest"], [shop_twin]).json()["accepted"] == [twin_id]
    assert wait_until(lambda: usage_day(server, ids["shop"]).get("deleted") == 1, timeout=20)
    time.sleep(1.0)  # several retention passes
    assert runs(server, ids["shop"]) == set()
    assert runs(server, ids["web"]) == {twin_id} and issues(server, ids["web"]) == {"fp-web-twin"}
    bundle = server.api("viewer", f"/v1/runs/{twin_id}/bundle")
    assert bundle.status_code == 200 and bundle.content == web_twin
