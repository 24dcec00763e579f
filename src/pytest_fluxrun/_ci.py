"""Reporting replay outcomes from CI to the FluxRun server (`POST /v1/regression-runs`).

The report never fails the test run: a server that cannot be reached is mentioned in one line, and
the tests' own pass/fail stays the build's verdict.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

__all__ = ["ci_metadata", "report_outcomes"]

_CI_VARIABLES = {
    "commit": ("GITHUB_SHA", "CI_COMMIT_SHA", "BUILDKITE_COMMIT", "CIRCLE_SHA1", "GIT_COMMIT"),
    "branch": ("GITHUB_REF_NAME", "CI_COMMIT_REF_NAME", "BUILDKITE_BRANCH", "CIRCLE_BRANCH", "GIT_BRANCH"),
    "run": ("GITHUB_RUN_ID", "CI_PIPELINE_ID", "BUILDKITE_BUILD_NUMBER", "CIRCLE_BUILD_NUM", "BUILD_NUMBER"),
}


def ci_metadata() -> dict[str, str]:
    found = {}
    for name, candidates in _CI_VARIABLES.items():
        for variable in candidates:
            if os.environ.get(variable):
                found[name] = os.environ[variable]
                break
    return found


def report_outcomes(dsn: str, outcomes: list[dict[str, Any]]) -> str:
    """POST the outcomes; return one line for the terminal saying what happened."""
    import httpx

    parts = urlsplit(dsn)
    if not parts.username or not parts.hostname:
        return "FluxRun: FLUXRUN_DSN is not https://TOKEN@host/PROJECT; replay outcomes were not reported"
    base = f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"
    meta = ci_metadata()
    body = {
        "results": [
            {"bundle_id": o["bundle_id"], "outcome": o["outcome"], "ci": {**meta, "test": o["test"]}} for o in outcomes
        ]
    }
    try:
        response = httpx.post(
            f"{base}/v1/regression-runs", json=body, headers={"authorization": f"Bearer {parts.username}"}, timeout=15
        )
    except httpx.TransportError as exc:
        return f"FluxRun: could not report {len(outcomes)} replay outcomes to {base}: {exc}"
    if response.status_code >= 400:
        return f"FluxRun: the server refused the replay report ({response.status_code}): {response.text[:200]}"
    issues = response.json().get("issues", [])
    summary = ", ".join(f"issue {i['id']} {i['status']}" for i in issues) or "no issues changed"
    return f"FluxRun: reported {len(outcomes)} replay outcomes to {base}: {summary}"
