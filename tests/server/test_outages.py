"""Outages: with PostgreSQL or the object store down, ingest keeps acknowledging into the WAL (tokens and
keys seen lately stay valid), answers 503 with Retry-After once it cannot (never a 500), /healthz says
unhealthy and tells its reasons only to an API key, the aggregator backs off and logs once per state
change, and everything acknowledged is indexed once the service is back."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from postgres import Cluster, start_cluster
from server_fixtures import Server
from server_process import wait_until
from servers import free_port

from fluxrun.bundle import load_capture_key, signing_public_key
from fluxrun_server.auth import INGEST_TOKEN, new_token
from fluxrun_server.ingest.batch import encode_batch

pytestmark = pytest.mark.slow

OUTAGE_S = 8.0  # long enough for a 50 ms retry loop to log 160 times


def pg_ctl(cluster: Cluster, action: str) -> None:
    """Stop (immediately, as a crash would) or start the throwaway cluster again, keeping its data."""
    data = str(cluster.folder / "data")
    if action == "stop":
        command = [str(cluster.bin_dir / "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"]
    else:
        options = f"-p {cluster.port} -k {cluster.folder / 'run'} -c listen_addresses=127.0.0.1 -c fsync=off"
        command = [str(cluster.bin_dir / "pg_ctl"), "-D", data, "-o", options, "-l", str(cluster.folder / "log"), "-w"]
        command.append("start")
    subprocess.run([*cluster.as_user, *command], check=True, capture_output=True)


def s3_bucket(endpoint: str) -> str:
    import boto3

    bucket = f"fluxrun-{secrets.token_hex(4)}"
    boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    ).create_bucket(Bucket=bucket)
    return bucket


def provisioned(data_dir: Path, env: dict[str, str], keys) -> Server:
    port = free_port()
    env = {"FLUXRUN_SERVER_DATA_DIR": str(data_dir), "FLUXRUN_SERVER_PORT": str(port), **env}
    server = Server(f"http://127.0.0.1:{port}", env, data_dir, "outage")
    server.admin("create-workspace", "acme")
    server.admin("create-project", "acme", "shop")
    key_id, public = signing_public_key(load_capture_key(keys.capture))
    server.admin("add-key", "acme/shop", f"{key_id}:{public}")
    server.tokens["ingest"] = server.admin("create-token", "acme/shop")
    server.tokens["api"] = server.admin("create-api-key", "acme", "operator")
    return server


def s3_env(endpoint: str) -> dict[str, str]:
    return {
        "FLUXRUN_SERVER_OBJECT_STORE_URL": f"s3://{s3_bucket(endpoint)}/bundles",
        "FLUXRUN_SERVER_S3_ENDPOINT_URL": endpoint,
        "FLUXRUN_SERVER_S3_REGION": "us-east-1",
        "FLUXRUN_SERVER_S3_ACCESS_KEY": "test",
        "FLUXRUN_SERVER_S3_SECRET_KEY": "test",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def post(server: Server, bundles: list[bytes], token: str | None = None) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/executions",
        content=encode_batch(bundles),
        headers={"authorization": f"Bearer {token or server.tokens['ingest']}"},
        timeout=30,
    )


def health(server: Server, *, with_key: bool) -> httpx.Response:
    headers = {"authorization": f"Bearer {server.tokens['api']}"} if with_key else {}
    return httpx.get(f"{server.url}/healthz", headers=headers, timeout=30)


def visible(server: Server, bundle_id: str) -> bool:
    headers = {"authorization": f"Bearer {server.tokens['api']}"}
    return httpx.get(f"{server.url}/v1/runs/{bundle_id}", headers=headers, timeout=30).status_code == 200


def aggregator_log_lines(server: Server) -> list[str]:
    return [line for line in server.output().splitlines() if "fluxrun_server.aggregator" in line]


@pytest.fixture
def postgres_server(tmp_path, keys, moto_endpoint) -> Iterator[tuple[Server, Cluster]]:
    cluster = start_cluster()
    try:
        with psycopg.connect(cluster.admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute('CREATE DATABASE "fluxrun"')
        env = {
            "FLUXRUN_SERVER_DATABASE_URL": cluster.database_url("fluxrun"),
            "FLUXRUN_SERVER_WAL_BACKLOG_BYTES": "20000",  # a budget of a few bundles, spent during the outage
            **s3_env(moto_endpoint),
        }
        server = provisioned(tmp_path / "data", env, keys)
        try:
            yield server, cluster
        finally:
            server.close()
    finally:
        cluster.stop()


def test_postgres_down_ingest_buffers_then_503_health_unhealthy_and_all_indexed_after(postgres_server, seal):
    server, cluster = postgres_server
    server.start()
    before_id, before = seal()
    assert post(server, [before]).status_code == 202
    assert wait_until(lambda: visible(server, before_id), timeout=30)
    assert health(server, with_key=True).status_code == 200  # the API key is now known to this node

    pg_ctl(cluster, "stop")
    outage_started = time.monotonic()
    time.sleep(6)  # past the token and key cache
    during_id, during = seal()
    response = post(server, [during])
    assert response.status_code == 202, response.text  # the last known token and key still count
    stranger = post(server, [seal()[1]], token=new_token(INGEST_TOKEN))  # a token this node never saw
    assert stranger.status_code == 503 and stranger.headers["retry-after"], stranger.text

    assert wait_until(lambda: health(server, with_key=False).status_code == 503, timeout=30)
    public = health(server, with_key=False).json()
    assert public["checks"]["database"] == "failing" and "errors" not in public
    assert "last_error" not in public["aggregator"] and "psycopg" not in str(public).lower()
    private = health(server, with_key=True).json()
    assert "database" in private["errors"] and private["aggregator"]["last_error"]

    answers = []  # ingest goes on into the WAL until its budget is spent, then 503 with Retry-After
    acknowledged = [during_id]
    for _ in range(40):
        bundle_id, bundle = seal(body_size=1000)
        response = post(server, [bundle])
        answers.append(response.status_code)
        if response.status_code == 202:
            acknowledged.append(bundle_id)
        else:
            assert response.status_code == 503 and response.headers["retry-after"], response.text
            break
    assert 503 in answers and 500 not in answers, answers
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - outage_started)))
    lines = aggregator_log_lines(server)
    assert len(lines) <= 4, "the aggregator logged at every retry:\n" + "\n".join(lines[:20])

    # the query API answers 503 with Retry-After too, with no traceback in the server's log
    api = {"authorization": f"Bearer {server.tokens['api']}"}
    for path in (f"/v1/runs/{before_id}", "/v1/projects/1/issues", "/v1/projects/1/runs", "/v1/projects"):
        answer = httpx.get(f"{server.url}{path}", headers=api, timeout=30)
        assert answer.status_code == 503 and answer.headers["retry-after"], (path, answer.status_code, answer.text)
        assert "unavailable" in answer.json()["detail"]
    output = server.output()
    assert "Traceback" not in output, output[max(0, output.find("Traceback") - 1500) :][:3000]

    pg_ctl(cluster, "start")
    assert wait_until(lambda: all(visible(server, i) for i in acknowledged), timeout=120), server.output()[-3000:]
    assert wait_until(lambda: health(server, with_key=False).status_code == 200, timeout=60)
    assert any("recovered" in line for line in aggregator_log_lines(server))


def test_object_store_down_ingest_acknowledges_health_unhealthy_and_all_stored_after(tmp_path, keys, seal):
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    server = provisioned(tmp_path / "data", s3_env(f"http://127.0.0.1:{port}"), keys)
    try:
        server.start()
        before_id, before = seal()
        assert post(server, [before]).status_code == 202
        assert wait_until(lambda: visible(server, before_id), timeout=30)

        moto.stop()  # the object store is gone (its buckets stay in this process, for the restart)
        outage_started = time.monotonic()
        during = [seal() for _ in range(3)]
        response = post(server, [b for _, b in during])
        assert response.status_code == 202, response.text
        assert wait_until(lambda: health(server, with_key=False).status_code == 503, timeout=90)
        public = health(server, with_key=False).json()
        assert public["checks"]["aggregator"] == "failing" and "errors" not in public
        assert health(server, with_key=True).json()["errors"]["aggregator"]
        assert not any(visible(server, i) for i, _ in during)
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - outage_started)))
        lines = aggregator_log_lines(server)
        assert len(lines) <= 4, "the aggregator logged at every retry:\n" + "\n".join(lines[:20])

        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        moto.start()
        assert wait_until(lambda: all(visible(server, i) for i, _ in during), timeout=120), server.output()[-3000:]
        assert wait_until(lambda: health(server, with_key=False).status_code == 200, timeout=60)
    finally:
        server.close()
        moto.stop()


def test_stuck_indexing_makes_health_unhealthy_until_it_moves_again(tmp_path, keys, seal):
    server = provisioned(tmp_path / "data", {"FLUXRUN_SERVER_HEALTH_BACKLOG_AGE_S": "2"}, keys)
    try:
        server.start()
        aggregator = health(server, with_key=False).json()["aggregator"]["pid"]
        os.kill(aggregator, signal.SIGSTOP)  # stuck: alive, holding its lock, doing nothing
        try:
            bundle_id, bundle = seal()
            assert post(server, [bundle]).status_code == 202
            assert wait_until(lambda: health(server, with_key=False).status_code == 503, timeout=30)
            public = health(server, with_key=False).json()
            assert public["checks"]["backlog"] == "failing" and "errors" not in public
            assert "indexing is stuck" in health(server, with_key=True).json()["errors"]["backlog"]
        finally:
            os.kill(aggregator, signal.SIGCONT)
        assert wait_until(lambda: visible(server, bundle_id), timeout=30)
        assert wait_until(lambda: health(server, with_key=False).status_code == 200, timeout=30)
    finally:
        server.close()
