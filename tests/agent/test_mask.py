"""`mask_payload`: what an unprotected unlock shows, field by field, and that it never changes its input."""

from __future__ import annotations

import base64
import copy

import orjson

from fluxrun.agent.mask import mask_payload
from fluxrun.scrub import MASK, Scrubber, default_scrubber


def http_event(**data):
    return {"seq": 0, "kind": "http", "call": "GET https://api.test/", "task": "0", "site": "m:f:1", "data": data}


def test_request_headers_query_and_json_body_are_masked_by_name():
    payload = {
        "bundle_id": "b1",
        "request": {
            "method": "POST",
            "path": "/login",
            "query_string": "page=2&access_token=abc123",
            "headers": [
                ["Authorization", "Basic dXNlcjpwYXNz"],
                ["X-Api-Key", "k-1"],
                ["content-type", "application/json"],
            ],
            "body": {"size": 40, "text": '{"user": "al", "password": "pw-1", "nested": {"card_number": "4111"}}'},
        },
    }
    masked = mask_payload(payload, default_scrubber())
    request = masked["request"]
    assert request["headers"] == [
        ["Authorization", f"Basic {MASK}"],
        ["X-Api-Key", MASK],
        ["content-type", "application/json"],
    ]
    assert request["query_string"] == f"page=2&access_token={MASK}"
    assert orjson.loads(request["body"]["text"]) == {"user": "al", "password": MASK, "nested": {"card_number": MASK}}
    assert request["method"] == "POST" and request["path"] == "/login" and masked["bundle_id"] == "b1"


def test_bodies_are_scrubbed_by_their_content_type():
    form = {"size": 30, "text": "user=al&password=pw-2&remember=1"}
    text = {"size": 30, "text": "connecting with Bearer abcdef123456 now"}
    binary = {"size": 20, "base64": base64.b64encode(b"password=pw-3&x=1").decode()}
    event = http_event(
        request={
            "method": "POST",
            "url": "https://u:p@api.test/x?sig=s1",
            "headers": [["Content-Type", "application/x-www-form-urlencoded"]],
            "body": form,
        },
        response={"status": 200, "headers": [["content-type", "text/plain"]], "body": text},
    )
    binary_event = http_event(
        request={
            "method": "POST",
            "url": "https://api.test/",
            "headers": [["content-type", "application/x-www-form-urlencoded"]],
            "body": binary,
        }
    )
    masked = mask_payload({"events": [event, binary_event]}, default_scrubber())
    first, second = masked["events"]
    assert first["data"]["request"]["body"]["text"] == f"user=al&password={MASK}&remember=1"
    assert first["data"]["request"]["url"] == f"https://{MASK}:{MASK}@api.test/x?sig={MASK}"
    assert first["data"]["response"]["body"]["text"] == f"connecting with Bearer {MASK} now"
    assert base64.b64decode(second["data"]["request"]["body"]["base64"]) == f"password={MASK}&x=1".encode()


def test_env_values_are_masked_by_name_and_by_shape():
    events = [
        {"kind": "env", "call": "env STRIPE_SECRET", "data": {"key": "STRIPE_SECRET", "present": True, "value": "x"}},
        {"kind": "env", "call": "env DATABASE_URL", "data": {"key": "DATABASE_URL", "present": True, "value": "postgres://app:pw@db/x"}},
        {"kind": "env", "call": "env REGION", "data": {"key": "REGION", "present": True, "value": "eu-west-1"}},
        {"kind": "env", "call": "env API_TOKEN", "data": {"key": "API_TOKEN", "present": False}},
    ]  # fmt: skip
    masked = [e["data"] for e in mask_payload({"events": events}, default_scrubber())["events"]]
    assert masked[0]["value"] == MASK
    assert masked[1]["value"] == f"postgres://{MASK}:{MASK}@db/x"
    assert masked[2]["value"] == "eu-west-1"
    assert masked[3] == {"key": "API_TOKEN", "present": False}  # "it was not set" stays visible


def test_boundaries_logs_errors_and_the_outcome_are_masked():
    payload = {
        "events": [
            {
                "kind": "host",
                "call": "db.load",
                "data": {
                    "name": "db.load",
                    "args": [7],
                    "kwargs": {"api_key": "k"},
                    "result": {"id": 7, "secret": "s"},
                },
                "error": {"type": "x:Err", "message": "failed with token=t-1", "exception": {"args": ["token=t-1"]}},
            },
            {
                "kind": "log",
                "call": "ERROR app",
                "data": {"logger": "app", "level": "ERROR", "message": "password: pw-4"},
            },
            {"kind": "random", "call": "secrets.token_hex", "data": {"value": "d00dfeed"}},
            {"kind": "random", "call": "random.random", "data": {"value": 0.25}},
        ],
        "outcome": {
            "kind": "error",
            "status": 500,
            "error": {
                "type": "builtins:ValueError",
                "message": "bad card 4111 1111 1111 1111",
                "fingerprint": "fp",
                "frames": [{"file": "a.py", "line": 3, "function": "f", "in_app": True, "code": "x = 1"}],
                "chain": [{"type": "builtins:KeyError", "message": "password=pw-5"}],
            },
            "response": {
                "status": 500,
                "headers": [["set-cookie", "sid=abc; Path=/"]],
                "body": {"text": '{"token": "t"}'},
            },
        },
    }
    masked = mask_payload(payload, default_scrubber())
    host, log, token, number = masked["events"]
    assert host["data"] == {
        "name": "db.load",
        "args": [7],
        "kwargs": {"api_key": MASK},
        "result": {"id": 7, "secret": MASK},
    }
    assert host["error"]["message"] == f"failed with token={MASK}"
    assert host["error"]["exception"] == {"args": [f"token={MASK}"]}
    assert log["data"]["message"] == f"password: {MASK}"
    assert token["data"]["value"] == MASK and number["data"]["value"] == 0.25
    error = masked["outcome"]["error"]
    assert error["message"] == f"bad card {MASK}" and error["fingerprint"] == "fp"
    assert error["chain"] == [{"type": "builtins:KeyError", "message": f"password={MASK}"}]
    assert error["frames"] == payload["outcome"]["error"]["frames"]
    response = masked["outcome"]["response"]
    assert response["headers"] == [["set-cookie", f"sid={MASK}; Path=/"]]
    assert response["body"]["text"] == f'{{"token": "{MASK}"}}'  # no content type: sniffed as JSON


def test_unknown_fields_are_masked_by_default_and_the_input_is_untouched():
    payload = {
        "format": 1,
        "future_field": {"password": "pw-6", "note": "ok"},
        "events": [{"kind": "newkind", "call": "x", "data": {"session": "s-7", "n": 1}}],
    }
    before = copy.deepcopy(payload)
    masked = mask_payload(payload, default_scrubber())
    assert payload == before
    assert masked["future_field"] == {"password": MASK, "note": "ok"}
    assert masked["events"][0]["data"] == {"session": MASK, "n": 1}


def test_the_scrubber_passed_in_decides():
    payload = {"request": {"headers": [["X-Tenant-Code", "t-8"]]}}
    assert mask_payload(payload, default_scrubber())["request"]["headers"] == [["X-Tenant-Code", "t-8"]]
    strict = Scrubber(extra_keys=["tenant_code"])
    assert mask_payload(payload, strict)["request"]["headers"] == [["X-Tenant-Code", MASK]]
