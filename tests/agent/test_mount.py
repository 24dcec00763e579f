"""The agent inside the customer's own FastAPI app (`fluxrun.agent.mount`), trust on first use, and the
`fluxrun agent` command's start-up errors."""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import fluxrun.agent
from fluxrun.agent.config import resolve_config
from fluxrun.errors import ConfigError
from fluxrun.scrub import MASK

pytestmark = pytest.mark.slow


@pytest.fixture
def shop(server, keys, pinned_grant_key, tmp_path):
    """A customer app with a route of its own and the agent mounted at /_fluxrun."""
    app = FastAPI()

    @app.get("/orders/{order_id}")
    def order(order_id: int) -> dict[str, int]:
        return {"order": order_id}

    fluxrun.agent.mount(
        app,
        replay_key=keys.replay,
        grant_key=pinned_grant_key,
        project="acme/shop",  # by name works as well as by id
        origin="https://dashboard.example.com",
        audit_log=tmp_path / "audit.jsonl",
    )
    with TestClient(app) as client:
        yield client


def post(client, action, grant, bundle):
    body = {"grant": grant, "bundle": base64.b64encode(bundle).decode()}
    return client.post(f"/_fluxrun/v1/{action}", json=body)


def test_mount_serves_the_agent_under_fluxrun_next_to_the_app(shop, server, web_run, captured_failure, tmp_path):
    assert shop.get("/orders/3").json() == {"order": 3}
    health = shop.get("/_fluxrun/v1/health").json()
    assert health["project"] == "acme/shop" and health["grant_key_trust"] == "pinned"

    bundle_id, marker = web_run()
    grant = server.grant(bundle_id).json()["grant"]
    response = post(shop, "unlock", grant, server.bundle(bundle_id))
    assert response.status_code == 200, response.text
    body = orjson.loads(response.content)
    assert orjson.loads(body["payload"]["request"]["body"]["text"])["password"] == MASK
    assert marker in response.text
    assert post(shop, "unlock", grant, server.bundle(bundle_id)).status_code == 409

    replayed = server.ingest(captured_failure)
    replay = post(shop, "replay", server.grant(replayed, "replay").json()["grant"], server.bundle(replayed))
    assert replay.status_code == 200 and replay.json()["outcome"] == "reproduced", replay.text

    cors = shop.options(
        "/_fluxrun/v1/unlock",
        headers={"origin": "https://dashboard.example.com", "access-control-request-method": "POST"},
    )
    assert cors.headers["access-control-allow-origin"] == "https://dashboard.example.com"
    lines = [orjson.loads(line) for line in (tmp_path / "audit.jsonl").read_bytes().splitlines()]
    assert [(e["action"], e["status"]) for e in lines] == [("unlock", 200), ("unlock", 409), ("replay", 200)]


def test_the_grant_key_can_be_trusted_on_first_use_and_says_so(server, keys, pinned_grant_key, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="fluxrun.agent"):
        config = resolve_config(
            replay_key=keys.replay, server=server.url, project="1", audit_log=tmp_path / "a.jsonl", env={}
        )
    assert config.grant_key_trust == "trusted on first use" and config.grant_key_server == server.url
    assert f"{config.grant_key_id}:" in pinned_grant_key
    assert "TRUSTED ON FIRST USE" in caplog.text and pinned_grant_key in caplog.text

    with pytest.raises(ConfigError, match="cannot fetch the grant key"):
        resolve_config(replay_key=keys.replay, server="http://127.0.0.1:9", project="1", env={})


def test_the_agent_command_refuses_to_start_half_configured(keys, pinned_grant_key, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUXRUN_")}

    def agent(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fluxrun.cli.app", "agent", "--port", "9"],
            env={**env, **extra}, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    no_key = agent()
    assert no_key.returncode == 1 and "FLUXRUN_REPLAY_KEY" in no_key.stderr
    no_project = agent(FLUXRUN_REPLAY_KEY=str(keys.replay), FLUXRUN_AGENT_GRANT_KEY=pinned_grant_key)
    assert no_project.returncode == 1 and "FLUXRUN_AGENT_PROJECT is not set" in no_project.stderr
    no_grant_key = agent(FLUXRUN_REPLAY_KEY=str(keys.replay), FLUXRUN_AGENT_PROJECT="1")
    assert no_grant_key.returncode == 1 and "FLUXRUN_AGENT_GRANT_KEY" in no_grant_key.stderr
    wildcard = agent(
        FLUXRUN_REPLAY_KEY=str(keys.replay),
        FLUXRUN_AGENT_PROJECT="1",
        FLUXRUN_AGENT_GRANT_KEY=pinned_grant_key,
        FLUXRUN_AGENT_ORIGIN="*",
    )
    assert wildcard.returncode == 1 and "wildcard" in wildcard.stderr
    capture_key = agent(
        FLUXRUN_REPLAY_KEY=str(keys.capture), FLUXRUN_AGENT_PROJECT="1", FLUXRUN_AGENT_GRANT_KEY=pinned_grant_key
    )
    assert capture_key.returncode == 1 and "this is a capture key" in capture_key.stderr
    for result in (no_key, no_project, no_grant_key, wildcard, capture_key):
        assert "Traceback" not in result.stderr
