"""Tenancy through HTTP, on both backends: a bundle belongs to the project it was signed for, (project,
bundle id) is its identity, public signing keys cannot be borrowed across workspaces, CI reports with a token
of its own kind, and another workspace's ids answer exactly like ids that do not exist.

Each test is one finding of issue 16 ("Tenancy") and failed on the code before the fix."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_process import wait_until

from fluxrun.bundle import Sealer, generate_keys, load_capture_key, signing_public_key
from fluxrun_server.ingest.batch import encode_batch

pytestmark = pytest.mark.slow


def post(server: Any, bundles: list[bytes], token: str = "ingest") -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/executions",
        content=encode_batch(bundles),
        headers={"authorization": f"Bearer {server.tokens[token]}"},
        timeout=30,
    )


def api(server: Any, path: str, token: str = "api", **params: Any) -> httpx.Response:
    return httpx.get(
        f"{server.url}{path}", params=params or None, headers={"authorization": f"Bearer {server.tokens[token]}"}
    )


def report(server: Any, bundle_id: str, token: str, outcome: str = "fixed") -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/regression-runs",
        json={"results": [{"bundle_id": bundle_id, "outcome": outcome}]},
        headers={"authorization": f"Bearer {server.tokens[token]}"},
        timeout=30,
    )


def visible(server: Any, bundle_id: str, token: str = "api") -> bool:
    return api(server, f"/v1/runs/{bundle_id}", token).status_code == 200


def key_line(capture: Path) -> str:
    key_id, public = signing_public_key(load_capture_key(capture))
    return f"{key_id}:{public}"


@pytest.fixture(scope="module")
def attacker_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """other/app's own capture key (the attacker's workspace)."""
    return generate_keys(tmp_path_factory.mktemp("attacker-keys"))[0]


def test_another_workspace_cannot_take_a_victims_bundle_with_its_public_key(server, seal, keys, attacker_key):
    """The issue's attack: workspace `other` registers acme's *public* signing key, ingests acme's bundle
    first, and acme's own delivery was answered 202 and dropped. Now the key cannot be registered there, the
    bundle names acme/shop in its signed header, and acme's delivery is stored in acme."""
    refused = server.run_admin("add-key", "other/app", key_line(keys.capture), check=False)
    assert refused.returncode != 0
    assert "active in another workspace" in refused.stdout + refused.stderr

    server.admin("add-key", "other/app", key_line(attacker_key))  # other/app's own key is fine
    bundle_id, bundle = seal()
    stolen = post(server, [bundle], token="other_ingest")
    assert stolen.status_code == 202 and stolen.json()["accepted"] == []
    [rejection] = stolen.json()["rejected"]
    assert rejection["reason"] == "unknown_key_id"  # acme's key is not other/app's

    delivered = post(server, [bundle])
    assert delivered.json() == {"accepted": [bundle_id], "rejected": []}
    assert wait_until(lambda: visible(server, bundle_id))
    assert not visible(server, bundle_id, "other_api")


def test_a_bundle_is_accepted_only_into_the_project_its_signature_names(server, seal):
    """Signed with acme/shop's registered key but for other/app: the signature is good, the project is not."""
    _, for_acme = seal(project="other/app")
    answer = post(server, [for_acme]).json()
    assert answer["accepted"] == []
    assert answer["rejected"][0]["reason"] == "wrong_project"
    assert "sealed for project 'other/app'" in answer["rejected"][0]["message"]
    assert "belongs to 'acme/shop'" in answer["rejected"][0]["message"]

    _, unbound = seal(project="")  # an app without FLUXRUN_DSN writes bundles like this to a folder
    [rejection] = post(server, [unbound]).json()["rejected"]
    assert rejection["reason"] == "wrong_project" and "FLUXRUN_DSN" in rejection["message"]


def test_a_version_1_bundle_that_names_no_project_is_refused(server, keys):
    old_sdk = Sealer(load_capture_key(keys.capture), sdk="fluxrun-python/0.0.1", _version=1)
    bundle = old_sdk.seal(summary={"route": "/"}, payload={}, bundle_id=secrets.token_hex(16))
    [rejection] = post(server, [bundle]).json()["rejected"]
    assert rejection["reason"] == "wrong_project"
    assert "version 1" in rejection["message"] and "upgrade" in rejection["message"]


def test_a_different_bundle_with_a_known_id_is_refused_and_an_identical_retry_is_not(server, seal):
    bundle_id, first = seal(route="/first")
    _, second = seal(route="/second", bundle_id=bundle_id)
    assert post(server, [first]).json()["accepted"] == [bundle_id]

    # acknowledged, not necessarily indexed yet: the server remembers what it acknowledged
    conflict = post(server, [second])
    assert conflict.status_code == 409, conflict.text
    assert conflict.json()["detail"]["rejected"][0]["reason"] == "duplicate_id"
    assert "already has a different bundle" in conflict.json()["detail"]["message"]
    assert post(server, [first]).json()["accepted"] == [bundle_id]  # the shipper's retry: idempotent

    assert wait_until(lambda: visible(server, bundle_id))
    # indexed now: the index answers
    assert post(server, [second]).status_code == 409
    assert post(server, [first]).json() == {"accepted": [bundle_id], "rejected": []}
    run = api(server, f"/v1/runs/{bundle_id}").json()
    assert run["route"] == "/first"

    # in one batch with a new bundle: only the different one is refused, the batch is kept
    fresh_id, fresh = seal()
    mixed = post(server, [second, fresh])
    assert mixed.status_code == 202
    assert mixed.json()["accepted"] == [fresh_id]
    assert [r["reason"] for r in mixed.json()["rejected"]] == ["duplicate_id"]

    # two different bundles with one new id in one batch: the first is kept
    twin_id, twin_a = seal(route="/a")
    _, twin_b = seal(route="/b", bundle_id=twin_id)
    both = post(server, [twin_a, twin_b]).json()
    assert both["accepted"] == [twin_id] and [r["reason"] for r in both["rejected"]] == ["duplicate_id"]
    assert wait_until(lambda: visible(server, twin_id))
    assert api(server, f"/v1/runs/{twin_id}").json()["route"] == "/a"


def test_one_bundle_id_in_two_projects_is_two_runs(server, seal, keys, attacker_key):
    server.admin("add-key", "other/app", key_line(attacker_key))  # registering a registered key is a no-op
    bundle_id, for_acme = seal(route="/acme")
    _, for_other = seal(route="/other", bundle_id=bundle_id, project="other/app", capture=attacker_key)
    assert post(server, [for_acme]).json()["accepted"] == [bundle_id]
    assert post(server, [for_other], token="other_ingest").json()["accepted"] == [bundle_id]
    assert wait_until(lambda: visible(server, bundle_id) and visible(server, bundle_id, "other_api"))
    assert api(server, f"/v1/runs/{bundle_id}").json()["route"] == "/acme"
    assert api(server, f"/v1/runs/{bundle_id}", "other_api").json()["route"] == "/other"
    assert api(server, f"/v1/runs/{bundle_id}/bundle").content == for_acme
    assert api(server, f"/v1/runs/{bundle_id}/bundle", "other_api").content == for_other

    # two projects of one workspace: the caller names the project
    server.admin("create-project", "acme", "web")
    server.admin("add-key", "acme/web", key_line(keys.capture))  # one key in two projects of one workspace is fine
    server.tokens["web_ingest"] = server.admin("create-token", "acme/web")
    _, for_web = seal(route="/web", bundle_id=bundle_id, project="acme/web")
    assert post(server, [for_web], token="web_ingest").json()["accepted"] == [bundle_id]
    projects = {p["name"]: p["id"] for p in api(server, "/v1/projects").json()["projects"]}
    assert wait_until(lambda: api(server, f"/v1/runs/{bundle_id}", project_id=projects["web"]).status_code == 200)
    ambiguous = api(server, f"/v1/runs/{bundle_id}")
    assert ambiguous.status_code == 409 and "name one with project_id" in ambiguous.json()["detail"]
    assert api(server, f"/v1/runs/{bundle_id}", project_id=projects["web"]).json()["route"] == "/web"
    assert api(server, f"/v1/runs/{bundle_id}", project_id=projects["shop"]).json()["route"] == "/acme"


def test_ci_reports_with_a_ci_token_and_an_ingest_token_cannot_mark_regressions_guarded(server, seal):
    bundle_id, bundle = seal(fingerprint=f"fp-{secrets.token_hex(3)}")
    post(server, [bundle])
    assert wait_until(lambda: visible(server, bundle_id))
    issue_id = api(server, f"/v1/runs/{bundle_id}").json()["issue_id"]

    refused = report(server, bundle_id, "ingest")
    assert refused.status_code == 401
    assert "--ci" in refused.json()["detail"]
    assert api(server, f"/v1/issues/{issue_id}").json()["status"] == "open"

    assert report(server, bundle_id, "ci").json()["issues"] == [{"id": issue_id, "status": "guarded"}]
    assert post(server, [seal()[1]], token="ci").status_code == 401  # a CI token cannot ingest


def test_another_workspaces_ids_answer_exactly_like_absent_ones(server, seal):
    bundle_id, bundle = seal(fingerprint=f"fp-{secrets.token_hex(3)}")
    post(server, [bundle])
    assert wait_until(lambda: visible(server, bundle_id))
    issue_id = api(server, f"/v1/runs/{bundle_id}").json()["issue_id"]
    absent_run, absent_issue = secrets.token_hex(16), 2_000_000_000

    def answer(path: str) -> tuple[int, str]:
        response = api(server, path, "other_api")
        return response.status_code, response.text

    def grant(run: str) -> tuple[int, str]:
        response = httpx.post(
            f"{server.url}/v1/grants",
            json={"bundle_id": run, "action": "unlock"},
            headers={"authorization": f"Bearer {server.tokens['other_api']}"},
        )
        return response.status_code, response.text

    for foreign, absent in (
        (answer(f"/v1/runs/{bundle_id}"), answer(f"/v1/runs/{absent_run}")),
        (answer(f"/v1/runs/{bundle_id}/bundle"), answer(f"/v1/runs/{absent_run}/bundle")),
        (grant(bundle_id), grant(absent_run)),
    ):
        assert foreign[0] == absent[0] == 404
        assert foreign[1].replace(bundle_id, "ID") == absent[1].replace(absent_run, "ID")
    foreign, absent = answer(f"/v1/issues/{issue_id}"), answer(f"/v1/issues/{absent_issue}")
    assert foreign[0] == absent[0] == 404
    assert foreign[1].replace(str(issue_id), "ID") == absent[1].replace(str(absent_issue), "ID")
