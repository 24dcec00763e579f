"""Durability of what the server acknowledged: a poison record is quarantined and indexing goes on, on
both backends; an acknowledged bundle survives a power cut on the embedded default (a crash shim keeps
only what was fsynced, file contents and directory entries, and drops the rest)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import httpx
import pytest
from power_cut import PowerCut
from server_fixtures import Server
from server_process import wait_until
from servers import free_port

from fluxrun.bundle import load_capture_key, signing_public_key
from fluxrun_server.ingest.batch import encode_batch
from fluxrun_server.ingest.records import pack_record
from fluxrun_server.ingest.wal import WriteAheadLog

pytestmark = pytest.mark.slow


def api(server, path, token_name="api"):
    return httpx.get(
        f"{server.url}{path}", headers={"authorization": f"Bearer {server.tokens[token_name]}"}, timeout=30
    )


def project_id(server, token_name="api"):
    return api(server, "/v1/projects", token_name).json()["projects"][0]["id"]


def visible(server, bundle_id, token_name="api"):
    return api(server, f"/v1/runs/{bundle_id}", token_name).status_code == 200


def quarantine_list(server, *args):
    """`fluxrun server quarantine list` against the server's settings, as an operator runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "fluxrun.cli.app", "server", "quarantine", "list", *args],
        env={**os.environ, **server.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def plant(server, records):
    """Append records to the server's WAL directly (the server is stopped: it holds the WAL's lock)."""
    with WriteAheadLog(server.data_dir / "wal") as wal:
        wal.append(records).result()


def test_a_poison_record_is_quarantined_and_indexing_goes_on_for_every_tenant(server, seal):
    acme, other = project_id(server), project_id(server, "other_api")
    overflow_id, overflow = seal(status=2**64 - 1)  # SQLite INTEGER and PostgreSQL int4 refuse it
    long_id, long_bundle = seal(bundle_id=secrets.token_hex(10_000))  # past PostgreSQL's b-tree row limit
    after_id, after = seal()
    tenant_id, tenant_bundle = seal()
    server.stop()
    plant(
        server,
        [
            pack_record(acme, overflow),
            pack_record(acme, long_bundle),
            pack_record(acme, b"\x00not a bundle at all"),
            pack_record(acme, after),
            pack_record(other, tenant_bundle),
        ],
    )
    server.start()
    assert wait_until(lambda: visible(server, after_id) and visible(server, tenant_id, "other_api"), timeout=60), (
        f"indexing stopped at the poison record:\n{server.output()[-3000:]}"
    )
    listed = quarantine_list(server)
    reasons = {row["bundle_id"]: row["reason"] for row in listed}
    assert overflow_id in reasons, listed
    assert any(r.startswith("unreadable record") for r in reasons.values())
    assert all(row["object_key"] and row["record_sha256"] for row in listed)
    if server.backend == "postgres-s3":
        assert long_id[:128] in reasons and all(len(b or "") <= 128 for b in reasons)
    else:  # SQLite takes the long id: it is stored, not quarantined
        assert visible(server, long_id)
    assert not visible(server, overflow_id)
    project_rows = quarantine_list(server, "--project", "acme/shop")
    assert len(project_rows) == len(listed)
    health = httpx.get(f"{server.url}/healthz", timeout=10)
    assert health.status_code == 200, health.text


@pytest.fixture
def embedded_server(tmp_path, keys):
    port = free_port()
    data = (tmp_path / "data").resolve()
    server = Server(
        f"http://127.0.0.1:{port}",
        {"FLUXRUN_SERVER_DATA_DIR": str(data), "FLUXRUN_SERVER_PORT": str(port)},
        data,
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


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as stat:  # a zombie counts as gone
        return stat.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_a_power_cut_after_the_ack_loses_no_acknowledged_bundle(embedded_server, seal):
    server = embedded_server
    server.start()  # a first run creates the WAL, the object store and the index files, then a clean stop
    server.stop()
    cut = PowerCut(server.data_dir)
    try:
        cut.baseline()
        plain_env = dict(server.env)
        server.env.update(cut.env)
        server.start()
        acknowledged = []
        with httpx.Client(timeout=30, headers={"authorization": f"Bearer {server.tokens['ingest']}"}) as client:
            for _ in range(10):
                batch = [seal() for _ in range(5)]
                response = client.post(f"{server.url}/v1/executions", content=encode_batch([b for _, b in batch]))
                assert response.status_code == 202, response.text
                acknowledged += response.json()["accepted"]
        assert len(acknowledged) == 50
        # Indexed and checkpointed: the WAL no longer holds them, only the index and the object store do.
        assert wait_until(lambda: all(visible(server, i) for i in acknowledged), timeout=60)
        details = {"authorization": f"Bearer {server.tokens['api']}"}
        assert wait_until(
            lambda: httpx.get(f"{server.url}/healthz", headers=details).json()["wal"]["backlog_records"] == 0,
            timeout=60,
        )
        aggregator = httpx.get(f"{server.url}/healthz", headers=details).json()["aggregator"]["pid"]
        server.stop(kill=True)
        assert wait_until(lambda: _gone(aggregator), timeout=30), "the aggregator outlived the killed server"
        kept = cut.cut()
        server.env = plain_env
        server.start()
        survived = wait_until(lambda: [i for i in acknowledged if visible(server, i)], timeout=30)
        assert len(survived) == 50, f"{len(survived)} of 50 acknowledged bundles survived the power cut ({kept})"
    finally:
        cut.close()
