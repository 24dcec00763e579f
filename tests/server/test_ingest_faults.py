"""Ingest under faults, in process (the faults are injected into the WAL): an fsync failure is never
acknowledged and makes the node unhealthy; a full disk answers 503 with Retry-After; a backlog past the
limit answers 429 with Retry-After."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from fluxrun.bundle import load_capture_key, signing_public_key
from fluxrun_server import admin
from fluxrun_server.control import ops
from fluxrun_server.ingest.batch import encode_batch
from fluxrun_server.main import create_app
from fluxrun_server.settings import ServerSettings


@pytest.fixture
def client(tmp_path: Path, keys):
    app = create_app(ServerSettings(data_dir=tmp_path / "data"))
    with TestClient(app) as test_client:
        state = app.state.fluxrun
        with Session(state.engine) as session:
            admin.create_workspace(session, "acme")
            admin.create_project(session, "acme", "shop")
            key_id, public = signing_public_key(load_capture_key(keys.capture))
            admin.register_key(session, "acme/shop", f"{key_id}:{public}")
            token = admin.issue_token(session, "acme/shop").secret
        test_client.headers["authorization"] = f"Bearer {token}"
        yield test_client, state


def test_an_fsync_failure_is_not_acknowledged_and_the_node_turns_unhealthy(client, seal):
    test_client, state = client

    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    state.wal._fsync = broken_fsync
    response = test_client.post("/v1/executions", content=encode_batch([seal()[1]]))
    assert response.status_code == 503 and "cannot store bundles durably" in response.json()["detail"]
    assert test_client.get("/healthz").status_code == 503
    state.wal._fsync = lambda fd: None  # the disk "recovers": the node still refuses, never acking into doubt
    assert test_client.post("/v1/executions", content=encode_batch([seal()[1]])).status_code == 503


def test_a_full_disk_answers_503_with_retry_after(client, seal):
    test_client, state = client

    def full(fd: int, data: memoryview) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    state.wal._write = full
    response = test_client.post("/v1/executions", content=encode_batch([seal()[1]]))
    assert response.status_code == 503 and response.headers["retry-after"] == "30"
    assert "disk is full" in response.json()["detail"]
    health = test_client.get("/healthz")  # unhealthy while the disk is full, with no reason told to strangers
    assert health.status_code == 503 and health.json()["checks"]["disk"] == "failing" and "errors" not in health.json()


def test_a_backlog_past_the_limit_answers_429(client, seal):
    test_client, state = client
    state.aggregator.stop()  # nothing drains the WAL now
    state.settings.wal_backlog_bytes = 1
    assert test_client.post("/v1/executions", content=encode_batch([seal()[1]])).status_code == 202
    response = test_client.post("/v1/executions", content=encode_batch([seal()[1]]))
    assert response.status_code == 429 and response.headers["retry-after"] == "2"


def test_a_batch_answered_503_gives_its_quota_back(client, seal):
    """The sender sends a refused batch again: it must not spend the daily quota twice."""
    test_client, state = client
    control = test_client.app.state.control
    with Session(state.engine) as session:
        operator = ops.Actor.operator()
        ops.create_plan(session, operator, "tiny", bundles_per_day=2)
        ops.set_project_plan(session, operator, admin.project_id(session, "acme/shop"), "tiny")
    control.gate.flush()  # the plan is in force from now on
    write = state.wal._write

    def full(fd: int, data: memoryview) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    state.wal._write = full
    batch = encode_batch([seal()[1], seal()[1]])
    assert test_client.post("/v1/executions", content=batch).status_code == 503
    state.wal._write = write  # space again; the WAL is usable after ENOSPC
    response = test_client.post("/v1/executions", content=batch)
    assert response.status_code == 202 and len(response.json()["accepted"]) == 2, response.text
    spent = test_client.post("/v1/executions", content=encode_batch([seal()[1]]))
    assert spent.status_code in (202, 429) and "quota_exceeded" in spent.text  # the quota holds after the refund
