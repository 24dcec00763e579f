"""Ingest refuses bundle text that would turn into code or paths downstream.

A bundle id becomes an object-store key, a URL segment, a file name and an argument of the dashboard's
`fluxrun pull` command; route and message are shown in the dashboard and written into generated tests.
Any member who registers a signing key can seal such a bundle, so a valid signature is not enough: ids
outside `[A-Za-z0-9_-]{1,64}` and a route, method, error type or message that is not a string are refused,
each bundle alone, with its reason, while the rest of the batch is kept.
"""

from __future__ import annotations

import httpx
import pytest
from server_process import wait_until

from fluxrun.bundle import Sealer, load_capture_key, open_bundle, read_bundle
from fluxrun_server.ingest.batch import encode_batch

pytestmark = pytest.mark.slow

HOSTILE_IDS = [
    'x"; touch /tmp/pwned; "',
    "$(touch /tmp/pwned)",
    "../../etc/passwd",
    "abc\n",
    "a" * 65,
    "caf\u00e9",
    "id with space",
]


def post(server, bundles):
    return httpx.post(
        f"{server.url}/v1/executions",
        content=encode_batch(bundles),
        headers={"authorization": f"Bearer {server.tokens['ingest']}"},
        timeout=30,
    )


def visible(server, bundle_id):
    response = httpx.get(
        f"{server.url}/v1/runs/{bundle_id}", headers={"authorization": f"Bearer {server.tokens['api']}"}, timeout=30
    )
    return response.status_code == 200


def test_bundle_ids_outside_the_safe_alphabet_are_rejected_alone(server, seal):
    good_id, good = seal()
    edge_id, edge = seal(bundle_id="A-z_9" + "x" * 59)  # 64 characters of the alphabet: accepted
    hostile = [seal(bundle_id=bundle_id)[1] for bundle_id in HOSTILE_IDS]
    response = post(server, [good, *hostile, edge])
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["accepted"] == [good_id, edge_id]
    assert [r["index"] for r in body["rejected"]] == list(range(1, 1 + len(HOSTILE_IDS)))
    for rejected in body["rejected"]:
        assert rejected["reason"] == "malformed"
        assert "A-Za-z0-9_-" in rejected["message"], rejected["message"]
    assert wait_until(lambda: visible(server, good_id) and visible(server, edge_id))


@pytest.mark.parametrize(
    ("field", "options"),
    [
        ("route", {"route": ["/a", "/b"]}),
        ("route", {"route": 7}),
        ("message", {"message": {"text": "boom"}}),
        ("message", {"message": 3.5}),
        ("error type", {"error_type": ["builtins:KeyError"]}),
    ],
)
def test_a_non_string_route_or_message_is_rejected_alone(server, seal, field, options):
    good_id, good = seal()
    bad_id, bad = seal(**options)
    response = post(server, [bad, good])
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["accepted"] == [good_id]
    [rejected] = body["rejected"]
    assert (rejected["index"], rejected["bundle_id"], rejected["reason"]) == (0, bad_id, "malformed")
    assert field in rejected["message"] and "string" in rejected["message"]
    assert wait_until(lambda: visible(server, good_id))
    assert not visible(server, bad_id)


def test_the_sdks_own_bundle_ids_pass(server, captured, keys):
    """The id `fluxrun.capture` chooses (a uuid4 hex) is accepted as it is. (Captured to a folder, without a DSN,
    the bundle names no project: it is sealed again for acme/shop, with the SDK's id and contents.)"""
    import fluxrun

    @fluxrun.capture
    def job() -> None:
        raise LookupError("missing")

    with pytest.raises(LookupError):
        job()
    [path] = captured.files()
    opened = open_bundle(path.read_bytes(), keys.replay_key)
    sealer = Sealer(load_capture_key(keys.capture), sdk="tests", project="acme/shop")
    bundle = sealer.seal(summary=opened.summary, payload=opened.payload, bundle_id=opened.sealed.bundle_id)
    response = post(server, [bundle])
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": [read_bundle(path.read_bytes()).bundle_id], "rejected": []}
