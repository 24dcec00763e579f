"""The distributed log on one NATS server: the edge answers 202 once JetStream has the bundles, an aggregator
process stores them, a retried batch is stored once; and start-up refuses settings that contradict it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from nats_cluster import NatsCluster
from scale_fixtures import Deployment, api_get, make_sealer, provision
from server_process import wait_until

from fluxrun_server.ingest.batch import encode_batch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nats_single() -> Iterator[NatsCluster]:
    cluster = NatsCluster(size=1)
    cluster.start()
    yield cluster
    cluster.stop()


def _server(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLUXRUN_SERVER_")}
    return subprocess.run(
        [sys.executable, "-m", "fluxrun.cli.app", "server", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_start_up_refuses_a_log_url_without_a_shared_index_or_store(tmp_path: Any) -> None:
    base = {"FLUXRUN_SERVER_DATA_DIR": str(tmp_path), "FLUXRUN_SERVER_LOG_URL": "nats://127.0.0.1:4222"}
    sqlite = _server(base)
    assert sqlite.returncode == 1
    assert "FLUXRUN_SERVER_LOG_URL needs a shared index" in sqlite.stderr and "SQLite" in sqlite.stderr

    folder = _server({**base, "FLUXRUN_SERVER_DATABASE_URL": "postgresql+psycopg://u@127.0.0.1:1/x"})
    assert folder.returncode == 1 and "needs a shared object store" in folder.stderr

    scheme = _server({**base, "FLUXRUN_SERVER_LOG_URL": "redis://127.0.0.1:6379"})
    assert scheme.returncode == 1 and "must start with nats:// or tls://" in scheme.stderr

    alone = _server({"FLUXRUN_SERVER_DATA_DIR": str(tmp_path)}, "aggregate")
    assert alone.returncode == 1 and "runs against a distributed log" in alone.stderr


def test_unreachable_log_is_refused_at_start_up(
    deployment_factory: Callable[[str], Deployment], keys: Any, tmp_path: Any
) -> None:
    from servers import free_port

    deployment = deployment_factory(f"nats://127.0.0.1:{free_port()}")
    result = _server({**deployment.env, "FLUXRUN_SERVER_DATA_DIR": str(tmp_path)}, "aggregate")
    assert result.returncode == 1 and "could not connect to NATS" in result.stderr


def test_edge_and_aggregator_on_one_nats_server(
    nats_single: NatsCluster, deployment_factory: Callable[[str], Deployment], keys: Any
) -> None:
    deployment = deployment_factory(nats_single.url)
    deployment.env["FLUXRUN_SERVER_LOG_REPLICAS"] = "1"  # a single server cannot hold three replicas
    provision(deployment, keys)
    edge = deployment.add_edge()
    edge.env["FLUXRUN_SERVER_LOG_REPLICAS"] = "1"
    edge.start()
    seal = make_sealer(keys)
    bundles = [seal(1024) for _ in range(5)]
    headers = {"authorization": f"Bearer {deployment.tokens['shop']}"}
    body = encode_batch([data for _, data in bundles])

    first = httpx.post(edge.url + "/v1/executions", content=body, headers=headers, timeout=10)
    assert first.status_code == 202, first.text
    assert first.json() == {"accepted": [bundle_id for bundle_id, _ in bundles], "rejected": []}
    again = httpx.post(edge.url + "/v1/executions", content=body, headers=headers, timeout=10)  # a retry
    assert again.status_code == 202

    health = httpx.get(edge.url + "/healthz", timeout=5).json()
    assert health["status"] == "ok" and health["wal"]["backlog_records"] >= 0

    aggregator = deployment.add_aggregator()
    aggregator.env["FLUXRUN_SERVER_LOG_REPLICAS"] = "1"
    aggregator.start()  # only now: the edge stored nothing itself, the log kept the bundles

    api = deployment.tokens["api"]
    projects = api_get(edge, api, "/v1/projects").json()["projects"]
    shop = next(p["id"] for p in projects if p["name"] == "shop")

    def listed() -> list[str]:
        return [r["bundle_id"] for r in api_get(edge, api, f"/v1/projects/{shop}/runs", limit=100).json()["runs"]]

    assert sorted(wait_until(lambda: len(listed()) >= 5 and listed(), timeout=30)) == sorted(b for b, _ in bundles)
    for bundle_id, data in bundles:
        assert api_get(edge, api, f"/v1/runs/{bundle_id}/bundle").content == data
    wait_until(lambda: httpx.get(edge.url + "/healthz", timeout=5).json()["wal"]["backlog_records"] == 0, 5)
    assert httpx.get(edge.url + "/healthz", timeout=5).json()["wal"]["backlog_records"] == 0  # all acknowledged
    assert sorted(listed()) == sorted(b for b, _ in bundles)  # the retried batch was stored once
