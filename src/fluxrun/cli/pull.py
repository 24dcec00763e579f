"""`fluxrun pull`: download captured failures (still encrypted) into a folder of regression guards.

A run id downloads that one bundle; an issue id (`issue:42` or `42`) downloads its newest runs. Files
are named after route, fingerprint and bundle id, checked to be well-formed bundles, and written
atomically, ready for `pytest --fluxrun-bundles DIR`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from rich.console import Console
from rich.progress import Progress

from fluxrun.bundle import read_bundle
from fluxrun.errors import FluxRunError

__all__ = ["pull"]


def server_from_env(server: str | None) -> str:
    if server:
        return server.rstrip("/")
    if os.environ.get("FLUXRUN_SERVER"):
        return os.environ["FLUXRUN_SERVER"].rstrip("/")
    dsn = os.environ.get("FLUXRUN_DSN")
    if dsn:
        parts = urlsplit(dsn)
        return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"
    raise FluxRunError("no server: pass --server URL or set FLUXRUN_SERVER (or FLUXRUN_DSN)")


def _slug(text: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "-", text).strip("-").lower()[:40] or "run"


class _Api:
    def __init__(self, server: str, api_key: str) -> None:
        self.client = httpx.Client(base_url=server, headers={"authorization": f"Bearer {api_key}"}, timeout=60)

    def get(self, path: str, **params: Any) -> httpx.Response:
        try:
            response = self.client.get(path, params=params or None)
        except httpx.TransportError as exc:
            raise FluxRunError(f"cannot reach the server at {self.client.base_url}: {exc}") from None
        if response.status_code in (401, 403):
            raise FluxRunError(
                f"the server refused the API key: {_detail(response)} (set FLUXRUN_API_KEY to a fra_ key)"
            )
        if response.status_code == 404:
            raise FluxRunError(f"not found: {_detail(response)}")
        if response.status_code >= 400:
            raise FluxRunError(f"the server answered {response.status_code}: {_detail(response)}")
        return response


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail"))
    except Exception:
        return response.text[:200]


def pull(
    console: Console, ref: str, folder: Path, *, server: str | None, api_key: str | None, limit: int
) -> list[Path]:
    key = api_key or os.environ.get("FLUXRUN_API_KEY")
    if not key:
        raise FluxRunError(
            "no API key: pass --api-key or set FLUXRUN_API_KEY (create one with `fluxrun server admin create-api-key`)"
        )
    api = _Api(server_from_env(server), key)
    issue = ref.removeprefix("issue:")
    if issue.isdigit():
        detail = api.get(f"/v1/issues/{issue}").json()
        runs = api.get(f"/v1/projects/{detail['project_id']}/runs", issue_id=issue, limit=limit).json()["runs"]
        if not runs:
            raise FluxRunError(f"issue {issue} has no runs to pull")
    else:
        runs = [api.get(f"/v1/runs/{ref}").json()]
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    with Progress(console=console, transient=True, disable=len(runs) < 3) as progress:
        task = progress.add_task("pulling bundles", total=len(runs))
        for run in runs:
            data = api.get(f"/v1/runs/{run['bundle_id']}/bundle").content
            read_bundle(data)  # a well-formed bundle, or a clear BundleError
            fingerprint = _slug((run.get("fingerprint") or "none")[:8])
            name = f"{_slug(run.get('route') or '')}-{fingerprint}-{_slug(run['bundle_id'][:8])}.fluxrun"
            path = folder / name
            temporary = folder / f".{name}.tmp"
            temporary.write_bytes(data)
            os.replace(temporary, path)
            written.append(path)
            progress.advance(task)
    return written
