"""Helpers for the control-plane tests: the server process of tests/support with GraphQL, REST and CLI
clients, and provisioning. (Not in conftest.py: test modules import these by name, and several test
folders have a conftest module.)"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from server_process import ServerProcess, wait_until

from fluxrun.bundle import load_capture_key, signing_public_key

__all__ = ["BACKENDS", "GraphQLFailed", "Server", "project_ids", "provision", "wait_until"]

BACKENDS = ["sqlite", "postgres"]


class GraphQLFailed(AssertionError):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors[0]["message"])
        self.errors = errors
        self.code = (errors[0].get("extensions") or {}).get("code")


@dataclass
class Server(ServerProcess):
    backend: str = "sqlite"
    keys: dict[str, str] = field(default_factory=dict)

    def admin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run_admin(*args, check=check)

    def out(self, *args: str) -> str:
        return self.admin(*args).stdout.strip()

    # -- clients ---------------------------------------------------------------------------------------------

    def gql(self, key: str, query: str, **variables: Any) -> dict[str, Any]:
        """Run a GraphQL operation with the API key named `key` (or a raw key); raise GraphQLFailed on errors."""
        token = self.keys.get(key, key)
        response = httpx.post(
            self.url + "/v1/graphql",
            json={"query": query, "variables": variables},
            headers={"authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        if body.get("errors"):
            raise GraphQLFailed(body["errors"])
        data: dict[str, Any] = body["data"]
        return data

    def ingest(self, token: str, bundles: list[bytes], timeout: float = 30) -> httpx.Response:
        return httpx.post(
            self.url + "/v1/executions",
            content=b"".join(len(b).to_bytes(4, "big") + b for b in bundles),
            headers={"authorization": f"Bearer {token}", "content-type": "application/x-fluxrun-batch"},
            timeout=timeout,
        )

    def api(self, key: str, path: str, **params: Any) -> httpx.Response:
        return httpx.get(
            self.url + path,
            params=params or None,
            headers={"authorization": f"Bearer {self.keys.get(key, key)}"},
            timeout=30,
        )


def provision(server: Server, capture_key: Path) -> None:
    """acme/shop (signed, with an ingest token) and acme/web; other/app; an API key per role in acme, one in other.

    Done in-process through `fluxrun_server.admin` (the CLI's functions) on the server's database: quicker than
    a CLI process per step; tests/control/test_cli.py runs the CLI itself."""
    from sqlmodel import Session

    from fluxrun_server import admin
    from fluxrun_server.index.database import make_engine, migrate
    from fluxrun_server.settings import ServerSettings

    settings = ServerSettings(data_dir=server.data_dir, database_url=server.env.get("FLUXRUN_SERVER_DATABASE_URL"))
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    key_id, public = signing_public_key(load_capture_key(capture_key))
    with Session(engine) as session:
        admin.create_workspace(session, "acme")
        admin.create_project(session, "acme", "shop")
        admin.create_project(session, "acme", "web")
        admin.create_workspace(session, "other")
        admin.create_project(session, "other", "app")
        for project in ("acme/shop", "acme/web"):  # one key, one workspace: other/app cannot register it too
            admin.register_key(session, project, f"{key_id}:{public}")
        server.keys["ingest"] = admin.issue_token(session, "acme/shop").secret
        server.keys["ci"] = admin.issue_token(session, "acme/shop", kind="ci").secret
        server.keys["ingest_web"] = admin.issue_token(session, "acme/web").secret
        server.keys["ingest_other"] = admin.issue_token(session, "other/app").secret
        for role in ("owner", "admin", "member", "viewer"):
            server.keys[role] = admin.create_api_key(session, "acme", f"{role}-key", role).secret
        server.keys["other_owner"] = admin.create_api_key(session, "other", "their-owner", "owner").secret
    engine.dispose()


def project_ids(server: Server) -> dict[str, int]:
    data = server.gql("owner", "{ projects { id name } }")
    return {p["name"]: p["id"] for p in data["projects"]}
