"""The server through HTTP: ingest checks and durable acks, the query API, isolation, regression runs."""

from __future__ import annotations

import gzip
import secrets

import httpx
import pytest
import zstandard
from server_process import wait_until

from fluxrun_server.ingest.batch import encode_batch

pytestmark = pytest.mark.slow


def post(server, bundles, *, token=None, headers=None, content=None):
    return httpx.post(
        f"{server.url}/v1/executions",
        content=content if content is not None else encode_batch(bundles),
        headers={"authorization": f"Bearer {token or server.tokens['ingest']}", **(headers or {})},
        timeout=30,
    )


def api(server, path, *, token=None, **kwargs):
    return httpx.get(
        f"{server.url}{path}",
        headers={"authorization": f"Bearer {token or server.tokens['api']}"},
        timeout=30,
        **kwargs,
    )


def project_id(server, token=None):
    projects = api(server, "/v1/projects", token=token).json()["projects"]
    return projects[0]["id"]


def visible(server, bundle_id):
    return api(server, f"/v1/runs/{bundle_id}").status_code == 200


def test_a_batch_is_acknowledged_then_queryable_and_downloadable(server, seal):
    ids, bundles = zip(*(seal() for _ in range(3)), strict=True)
    response = post(server, list(bundles))
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": list(ids), "rejected": []}
    assert wait_until(lambda: all(visible(server, i) for i in ids))
    run = api(server, f"/v1/runs/{ids[0]}").json()
    assert run["route"] == "/orders/{order_id}" and run["error_type"] == "builtins:KeyError" and run["status"] == 500
    assert run["network"] == [
        {
            "seq": 0,
            "label": "GET https://pricing.test/price/sku-7",
            "status": 200,
            "error_type": None,
            "start_ms": 1.0,
            "dur_ms": 3.5,
        }
    ]
    assert api(server, f"/v1/runs/{ids[1]}/bundle").content == bundles[1]  # still sealed: only the owner opens it
    issues = api(server, f"/v1/projects/{project_id(server)}/issues").json()["issues"]
    assert any(i["fingerprint"] == "fp-keyerror-price" and i["count"] >= 3 for i in issues)


def test_a_bad_signature_is_rejected_alone_and_the_rest_is_kept(server, seal, tmp_path):
    good_id, good = seal()
    bad_id, bad = seal()
    tampered = bytearray(bad)
    tampered[-70] ^= 0xFF  # inside the ciphertext
    from fluxrun.bundle import Sealer, generate_keys, load_capture_key

    stranger_capture, _ = generate_keys(tmp_path / "stranger")
    stranger_id = secrets.token_hex(16)
    stranger = Sealer(load_capture_key(stranger_capture), sdk="x").seal(
        summary={"bundle_id": stranger_id}, payload={}, bundle_id=stranger_id
    )
    response = post(server, [good, bytes(tampered), stranger, b"not a bundle at all"])
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == [good_id]
    reasons = {(r["bundle_id"], r["reason"]) for r in body["rejected"]}
    assert reasons == {(bad_id, "tampered"), (stranger_id, "unknown_key_id"), (None, "not_a_bundle")}
    assert all(r["message"] for r in body["rejected"])
    assert wait_until(lambda: visible(server, good_id))
    assert api(server, f"/v1/runs/{bad_id}").status_code == 404


@pytest.mark.parametrize(
    ("token_name", "status", "message"),
    [
        (None, 401, "missing credentials"),
        ("garbage", 401, "not a FluxRun token"),
        ("api", 401, "this is an API key (fra_)"),
        ("revoked", 401, "unknown or revoked"),
    ],
)
def test_bad_ingest_credentials(server, seal, token_name, status, message):
    headers = {}
    if token_name == "garbage":
        headers["authorization"] = "Bearer hello"
    elif token_name == "api":
        headers["authorization"] = f"Bearer {server.tokens['api']}"
    elif token_name == "revoked":
        token = server.admin("create-token", "acme/shop")
        server.admin("revoke-token", token[:12])
        headers["authorization"] = f"Bearer {token}"
    response = httpx.post(f"{server.url}/v1/executions", content=encode_batch([seal()[1]]), headers=headers)
    assert response.status_code == status and message in response.json()["detail"]


def test_an_ingest_token_can_never_read_the_query_api(server):
    response = api(server, "/v1/projects", token=server.tokens["ingest"])
    assert response.status_code == 403 and "ingest token" in response.json()["detail"]


def test_size_limits_are_enforced_while_reading(server, seal):
    huge = b"\0" * (3 * 1024 * 1024)
    assert post(server, [], content=huge).status_code == 413  # Content-Length over the limit

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(48):
            yield b"\0" * 65536

    streamed = httpx.post(
        f"{server.url}/v1/executions", content=chunks(), headers={"authorization": f"Bearer {server.tokens['ingest']}"}
    )
    assert streamed.status_code == 413 and "limit" in streamed.json()["detail"]
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (16 * 1024 * 1024))
    response = post(server, [], content=bomb, headers={"content-encoding": "zstd"})
    assert response.status_code == 413 and "decompresses to more than" in response.json()["detail"]
    gz_bomb = gzip.compress(b"\0" * (16 * 1024 * 1024))
    assert post(server, [], content=gz_bomb, headers={"content-encoding": "gzip"}).status_code == 413
    _, big = seal(body_size=1_500_000)
    response = post(server, [big])
    assert response.status_code == 413 and "over the" in response.json()["detail"]


def test_malformed_batches_say_what_is_wrong(server, seal):
    _, bundle = seal()
    assert "ends inside a length prefix" in post(server, [], content=b"\x00\x00").json()["detail"]
    truncated = encode_batch([bundle])[:-10]
    response = post(server, [], content=truncated)
    assert response.status_code == 400 and "only" in response.json()["detail"]
    assert post(server, [], content=b"").status_code == 400
    response = post(server, [], content=b"xx", headers={"content-encoding": "br"})
    assert response.status_code == 400 and "not supported" in response.json()["detail"]


def test_compressed_batches_are_accepted(server, seal):
    bundle_id, bundle = seal()
    body = zstandard.ZstdCompressor().compress(encode_batch([bundle]))
    assert post(server, [], content=body, headers={"content-encoding": "zstd"}).json()["accepted"] == [bundle_id]


def test_a_retried_bundle_is_stored_once(server, seal):
    bundle_id, bundle = seal(fingerprint="fp-retry")
    for _ in range(3):
        assert post(server, [bundle]).status_code == 202
    assert wait_until(lambda: visible(server, bundle_id))
    pid = project_id(server)
    wait_until(lambda: False, timeout=0.5)  # let the aggregator pass over the duplicates too
    runs = api(server, f"/v1/projects/{pid}/runs", params={"q": "", "limit": 500}).json()["runs"]
    assert [r["bundle_id"] for r in runs].count(bundle_id) == 1
    issue = next(
        i for i in api(server, f"/v1/projects/{pid}/issues").json()["issues"] if i["fingerprint"] == "fp-retry"
    )
    assert issue["count"] == 1


def test_workspaces_never_see_each_other(server, seal):
    bundle_id, bundle = seal()
    post(server, [bundle])
    assert wait_until(lambda: visible(server, bundle_id))
    other = server.tokens["other_api"]
    assert [p["name"] for p in api(server, "/v1/projects", token=other).json()["projects"]] == ["app"]
    acme_project = project_id(server)
    assert api(server, f"/v1/projects/{acme_project}/runs", token=other).status_code == 404
    assert api(server, f"/v1/runs/{bundle_id}", token=other).status_code == 404
    assert api(server, f"/v1/runs/{bundle_id}/bundle", token=other).status_code == 404
    issue_id = api(server, f"/v1/runs/{bundle_id}").json()["issue_id"]
    assert api(server, f"/v1/issues/{issue_id}", token=other).status_code == 404
    # the other workspace's CI token cannot report on acme's bundles either
    report = httpx.post(
        f"{server.url}/v1/regression-runs",
        json={"results": [{"bundle_id": bundle_id, "outcome": "fixed"}]},
        headers={"authorization": f"Bearer {server.tokens['other_ci']}"},
    )
    assert report.status_code == 404


def test_runs_filter_and_paginate_with_a_cursor(server, seal):
    release = f"r-{secrets.token_hex(3)}"
    ids = [seal(release=release, route=f"/items/{n % 2}")[0:2] for n in range(25)]
    assert post(server, [b for _, b in ids]).status_code == 202
    pid = project_id(server)
    assert wait_until(lambda: all(visible(server, i) for i, _ in ids))
    seen, cursor = [], None
    while True:
        params = {"release": release, "limit": 10, **({"cursor": cursor} if cursor else {})}
        page = api(server, f"/v1/projects/{pid}/runs", params=params).json()
        seen.extend(r["bundle_id"] for r in page["runs"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(i for i, _ in ids) and len(seen) == 25
    only = api(
        server, f"/v1/projects/{pid}/runs", params={"release": release, "route": "/items/1", "limit": 100}
    ).json()
    assert len(only["runs"]) == 12
    text = api(server, f"/v1/projects/{pid}/runs", params={"q": "'price", "release": release}).json()
    assert len(text["runs"]) == 25
    assert api(server, f"/v1/projects/{pid}/runs", params={"cursor": "nonsense"}).status_code == 400


def test_regression_runs_guard_or_regress_the_issue(server, seal):
    bundle_id, bundle = seal(fingerprint=f"fp-{secrets.token_hex(3)}")
    post(server, [bundle])
    assert wait_until(lambda: visible(server, bundle_id))
    issue_id = api(server, f"/v1/runs/{bundle_id}").json()["issue_id"]

    def report(outcome):
        return httpx.post(
            f"{server.url}/v1/regression-runs",
            json={"results": [{"bundle_id": bundle_id, "outcome": outcome, "ci": {"commit": "abc123"}}]},
            headers={"authorization": f"Bearer {server.tokens['ci']}"},
        )

    assert report("fixed").json()["issues"] == [{"id": issue_id, "status": "guarded"}]
    assert api(server, f"/v1/issues/{issue_id}").json()["status"] == "guarded"
    assert report("reproduced").json()["issues"] == [{"id": issue_id, "status": "regressed"}]
    detail = api(server, f"/v1/issues/{issue_id}").json()
    assert [r["outcome"] for r in detail["regression_runs"]] == ["reproduced", "fixed"]
    assert sum(point["count"] for point in detail["series"]) == 1


def test_issue_status_changes_need_a_non_viewer(server, seal):
    bundle_id, bundle = seal(fingerprint=f"fp-{secrets.token_hex(3)}")
    post(server, [bundle])
    assert wait_until(lambda: visible(server, bundle_id))
    issue_id = api(server, f"/v1/runs/{bundle_id}").json()["issue_id"]
    url = f"{server.url}/v1/issues/{issue_id}"
    viewer = httpx.patch(
        url, json={"status": "resolved"}, headers={"authorization": f"Bearer {server.tokens['viewer']}"}
    )
    assert viewer.status_code == 403
    ok = httpx.patch(url, json={"status": "resolved"}, headers={"authorization": f"Bearer {server.tokens['api']}"})
    assert ok.json()["status"] == "resolved"
    # audited like the dashboard's resolve: who, what, from which status
    history = api(server, f"/v1/issues/{issue_id}/triage").json()["history"]
    assert [(e["action"], e["detail"]["old"], e["detail"]["new"]) for e in history] == [
        ("issue.resolve", "open", "resolved")
    ]
    assert history[0]["actor"].startswith("api_key:fra_")
    # the same failure seen again in production: resolved -> regressed
    _, again = seal(fingerprint=ok.json()["fingerprint"])
    post(server, [again])
    assert wait_until(lambda: api(server, f"/v1/issues/{issue_id}").json()["status"] == "regressed")


def test_a_shipper_hanging_up_mid_body_stores_nothing_and_logs_no_traceback(server, seal):
    import socket
    from urllib.parse import urlsplit

    bundle_id, bundle = seal()
    body = encode_batch([bundle])
    url = urlsplit(server.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        head = (
            f"POST /v1/executions HTTP/1.1\r\nhost: {url.netloc}\r\ncontent-length: {len(body)}\r\n"
            f"authorization: Bearer {server.tokens['ingest']}\r\n\r\n"
        )
        sock.sendall(head.encode() + body[: len(body) // 2])
    _, other = seal()
    assert post(server, [other]).status_code == 202  # still serving
    assert api(server, f"/v1/runs/{bundle_id}").status_code == 404
    assert "Traceback" not in server.output()


def test_the_openapi_schema_is_served(server):
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert {"/v1/executions", "/v1/projects/{project_id}/runs", "/v1/regression-runs"} <= set(schema["paths"])
