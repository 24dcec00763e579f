"""Alerts against local receivers: a webhook receiver on loopback (HMAC signature, retries with backoff,
dead letters visible to admins) and an SMTP sink (aiosmtpd); new issue, regression (in CI and in
production) and spike rules; at-least-once across a crash; ingest never waits for a delivery.
On SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import secrets
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from control_helpers import BACKENDS, GraphQLFailed, Server, provision, wait_until
from servers import free_port

from fluxrun.bundle import load_capture_key, signing_public_key
from fluxrun_server.control.alerts import verify


class Receiver:
    """Webhook endpoints by path: /ok, /flaky (500 twice, then 200), /dead (always 500), /slow (3 s), /down
    (503 while `down` is set)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.arrivals: dict[str, list[float]] = {}
        self.flaky_left = 2
        self.down = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                path = self.path.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
                receiver.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                receiver.arrivals.setdefault(self.path, []).append(time.monotonic())
                status = 200
                if path == "flaky" and receiver.flaky_left > 0:
                    receiver.flaky_left -= 1
                    status = 500
                elif path == "dead" or (path == "down" and receiver.down.is_set()):
                    status = 500 if path == "dead" else 503
                elif path == "slow":
                    time.sleep(3)
                self.send_response(status)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def to(self, path: str) -> list[tuple[str, dict[str, str], bytes]]:
        return [r for r in self.requests if r[0] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Sink:
    """aiosmtpd handler keeping every message it is sent."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[Sink, int]]:
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    yield sink, port
    controller.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest, make_server: Any, keys: Any, smtp: tuple[Sink, int]) -> Server:
    srv: Server = make_server(
        request.param,
        alert_max_attempts="3",
        webhook_allow_private="true",  # the receivers are on loopback
        smtp_host="127.0.0.1",
        smtp_port=str(smtp[1]),
        smtp_from="alerts@flux.test",
    )
    provision(srv, keys.capture)
    srv.start()
    return srv


def new_project(server: Server, keys: Any) -> tuple[int, str, str]:
    """A fresh project in acme with the test signing key: (id, ingest token, name)."""
    name = f"p{secrets.token_hex(3)}"
    project_id = server.gql("admin", "mutation($n: String!) { createProject(name: $n) { id } }", n=name)[
        "createProject"
    ]["id"]
    key_id, public = signing_public_key(load_capture_key(keys.capture))
    server.gql(
        "admin",  # registering keys and minting tokens is for admins
        "mutation($p: Int!, $k: String!) { registerSigningKey(projectId: $p, publicKey: $k) { keyId } }",
        p=project_id,
        k=f"{key_id}:{public}",
    )
    token = server.gql("admin", "mutation($p: Int!) { createToken(projectId: $p) { secret } }", p=project_id)
    return project_id, token["createToken"]["secret"], name


def rule(server: Server, project_id: int, kind: str, channel: str, target: str, threshold: int | None = None) -> int:
    made = server.gql(
        "member",
        "mutation($p: Int!, $k: String!, $c: String!, $t: String!, $h: Int) "
        "{ createAlertRule(projectId: $p, kind: $k, channel: $c, target: $t, threshold: $h) { id } }",
        p=project_id,
        k=kind,
        c=channel,
        t=target,
        h=threshold,
    )
    rule_id: int = made["createAlertRule"]["id"]
    return rule_id


def secret_of(server: Server, project_id: int, rule_id: int) -> str:
    rules = server.gql("admin", "query($p: Int!) { alertRules(projectId: $p) { id secret } }", p=project_id)
    (found,) = [r["secret"] for r in rules["alertRules"] if r["id"] == rule_id]
    return str(found)


def deliveries(server: Server, status: str, project_id: int) -> list[dict[str, Any]]:
    data = server.gql(
        "admin",
        "query($s: String!, $p: Int) { deliveries(status: $s, projectId: $p) "
        "{ id ruleId eventKey status attempts lastError payload } }",
        s=status,
        p=project_id,
    )
    result: list[dict[str, Any]] = data["deliveries"]
    return result


def test_new_issue_webhook_is_signed_and_retried_with_backoff(
    server: Server, receiver: Receiver, keys: Any, seal: Any
) -> None:
    project_id, token, name = new_project(server, keys)
    path = f"/{name}/flaky"
    receiver.flaky_left = 2
    rule_id = rule(server, project_id, "new_issue", "webhook", receiver.url + path)
    secret = secret_of(server, project_id, rule_id)
    assert server.ingest(token, [seal(fingerprint="fp-new", project=f"acme/{name}")[1]]).status_code == 202

    assert wait_until(lambda: len(receiver.to(path)) >= 3, timeout=20), receiver.to(path)
    time.sleep(0.5)
    calls = receiver.to(path)
    assert len(calls) == 3  # two 500s, then delivered; no more after that
    assert len({headers["x-fluxrun-delivery"] for _, headers, _ in calls}) == 1  # one delivery id for dedupe
    _, headers, body = calls[-1]
    payload = json.loads(body)
    assert payload["event"] == "new_issue" and headers["x-fluxrun-event"] == "new_issue"
    assert payload["issue"]["fingerprint"] == "fp-new" and payload["project"]["name"] == f"acme/{name}"
    # the signature, checked by hand as a receiver would: HMAC-SHA256 over "<t>." + body with the rule's secret
    fields = dict(part.split("=", 1) for part in headers["x-fluxrun-signature"].split(","))
    expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected)
    assert verify(secret, headers["x-fluxrun-signature"], body)
    assert not verify(secret, headers["x-fluxrun-signature"], body.replace(b"fp-new", b"fp-old"))
    assert not verify("another-secret", headers["x-fluxrun-signature"], body)
    (done,) = deliveries(server, "delivered", project_id)
    assert done["attempts"] == 3 and done["lastError"] is None
    # the same issue again is not new
    assert server.ingest(token, [seal(fingerprint="fp-new", project=f"acme/{name}")[1]]).status_code == 202
    time.sleep(1.0)
    assert len(receiver.to(path)) == 3


def test_regression_alerts_in_ci_and_in_production(server: Server, receiver: Receiver, keys: Any, seal: Any) -> None:
    project_id, token, name = new_project(server, keys)
    path = f"/{name}/ok"
    rule(server, project_id, "regression", "webhook", receiver.url + path)
    guarded_id, guarded = seal(fingerprint="fp-guarded", project=f"acme/{name}")
    ci_id, ci = seal(fingerprint="fp-ci", project=f"acme/{name}")
    assert server.ingest(token, [guarded, ci]).status_code == 202
    runs = f"/v1/projects/{project_id}/runs"
    assert wait_until(lambda: len(server.api("viewer", runs).json()["runs"]) == 2)

    ci_token = server.gql(  # CI reports with a token of its own kind
        "admin", 'mutation($p: Int!) { createToken(projectId: $p, kind: "ci") { secret } }', p=project_id
    )["createToken"]["secret"]
    assert ci_token.startswith("frc_")

    def report(bundle_id: str, outcome: str) -> None:
        import httpx

        response = httpx.post(
            server.url + "/v1/regression-runs",
            json={"results": [{"bundle_id": bundle_id, "outcome": outcome}]},
            headers={"authorization": f"Bearer {ci_token}"},
        )
        assert response.status_code == 201, response.text

    report(guarded_id, "fixed")  # guarded: no alert
    report(ci_id, "reproduced")  # failing again in CI: regression
    assert wait_until(lambda: len(receiver.to(path)) == 1, timeout=15)
    assert json.loads(receiver.to(path)[0][2])["issue"]["fingerprint"] == "fp-ci"
    again = seal(fingerprint="fp-guarded", project=f"acme/{name}")[1]
    assert server.ingest(token, [again]).status_code == 202  # reappears in production
    assert wait_until(lambda: len(receiver.to(path)) == 2, timeout=15)
    event = json.loads(receiver.to(path)[1][2])
    assert event["event"] == "regression" and event["issue"]["fingerprint"] == "fp-guarded"
    assert event["issue"]["status"] == "regressed"
    time.sleep(1.0)
    assert len(receiver.to(path)) == 2  # once per regression, not once per scan


def test_email_alerts_for_new_issues_and_spikes(server: Server, smtp: tuple[Sink, int], keys: Any, seal: Any) -> None:
    sink, _ = smtp
    project_id, token, name = new_project(server, keys)
    rule(server, project_id, "new_issue", "email", f"oncall+{name}@acme.test")
    rule(server, project_id, "spike", "email", f"spikes+{name}@acme.test", threshold=3)
    assert server.ingest(token, [seal(fingerprint="fp-mail", project=f"acme/{name}")[1]]).status_code == 202

    def mails(to: str) -> list[Any]:
        return [m for m in sink.messages if m["To"] == to]

    assert wait_until(lambda: mails(f"oncall+{name}@acme.test"), timeout=15)
    (mail,) = mails(f"oncall+{name}@acme.test")
    assert mail["From"] == "alerts@flux.test"
    assert mail["Subject"].startswith(f"[FluxRun] New issue in acme/{name}: builtins:KeyError")
    assert "fp-mail" in mail.get_payload()
    assert not mails(f"spikes+{name}@acme.test")  # one execution is no spike
    five = [seal(fingerprint="fp-mail", project=f"acme/{name}")[1] for _ in range(5)]
    assert server.ingest(token, five).status_code == 202
    assert wait_until(lambda: mails(f"spikes+{name}@acme.test"), timeout=15)
    time.sleep(1.0)
    (spike,) = mails(f"spikes+{name}@acme.test")  # once per issue per hour
    assert spike["Subject"].startswith(f"[FluxRun] Spike in acme/{name}")
    assert "executions in the last hour (threshold 3)" in spike.get_payload()


def test_dead_letters_are_visible_to_admins_and_can_be_retried(
    server: Server, receiver: Receiver, keys: Any, seal: Any
) -> None:
    project_id, token, name = new_project(server, keys)
    path = f"/{name}/dead"
    rule(server, project_id, "new_issue", "webhook", receiver.url + path)
    assert server.ingest(token, [seal(fingerprint="fp-dead", project=f"acme/{name}")[1]]).status_code == 202
    dead = wait_until(lambda: deliveries(server, "dead", project_id), timeout=20)
    assert dead, deliveries(server, "pending", project_id)
    (letter,) = dead
    assert letter["attempts"] == 3 and "HTTP 500" in letter["lastError"] and len(receiver.to(path)) == 3
    times = receiver.arrivals[path]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[1] > gaps[0] >= 0.15, gaps  # exponential backoff: about 0.2 s, then 0.4 s
    for role in ("member", "viewer"):
        with pytest.raises(GraphQLFailed) as failed:
            server.gql(role, '{ deliveries(status: "dead") { id } }')
        assert failed.value.code == "FORBIDDEN"
    with pytest.raises(GraphQLFailed, match="no alert delivery"):
        server.gql("other_owner", "mutation($i: Int!) { retryDelivery(id: $i) { status } }", i=letter["id"])
    retried = server.gql("admin", "mutation($i: Int!) { retryDelivery(id: $i) { status attempts } }", i=letter["id"])
    assert retried["retryDelivery"] == {"status": "pending", "attempts": 0}
    assert wait_until(lambda: len(receiver.to(path)) >= 4, timeout=15)


def test_ingest_never_waits_for_alert_delivery(server: Server, receiver: Receiver, keys: Any, seal: Any) -> None:
    project_id, token, name = new_project(server, keys)
    path = f"/{name}/slow"
    rule(server, project_id, "new_issue", "webhook", receiver.url + path)
    latencies = []
    for i in range(8):
        bundle = seal(fingerprint=f"fp-slow-{i}", project=f"acme/{name}")[1]
        start = time.perf_counter()
        assert server.ingest(token, [bundle]).status_code == 202
        latencies.append(time.perf_counter() - start)
        time.sleep(0.3)
    assert len(receiver.to(path)) >= 1  # deliveries were under way (each takes 3 s) while ingest answered
    assert max(latencies) < 1.0, latencies
    assert wait_until(lambda: len(deliveries(server, "delivered", project_id)) == 8, timeout=60)


@pytest.mark.parametrize("backend", BACKENDS)
def test_alerts_are_at_least_once_across_crashes(
    backend: str, make_server: Any, receiver: Receiver, keys: Any, seal: Any
) -> None:
    """Killed right after the ingest ack, and again while the receiver is failing: the alert still arrives."""
    server: Server = make_server(  # an 8 s lease; the receiver is on loopback
        backend, alert_max_attempts="50", webhook_timeout_s="1", webhook_allow_private="true"
    )
    provision(server, keys.capture)
    server.start()
    project_id, token, name = new_project(server, keys)
    path = f"/{name}/down"
    receiver.down.set()
    rule(server, project_id, "new_issue", "webhook", receiver.url + path)
    assert server.ingest(token, [seal(fingerprint="fp-crash", project=f"acme/{name}")[1]]).status_code == 202
    server.stop(kill=True)  # acknowledged means in the WAL; the issue and its alert do not exist yet
    server.start()
    assert wait_until(lambda: receiver.to(path), timeout=20)  # the receiver is failing: retries pending
    server.stop(kill=True)
    receiver.down.clear()
    server.start()
    assert wait_until(lambda: deliveries(server, "delivered", project_id), timeout=30)
    bodies = [json.loads(body) for _, _, body in receiver.to(path)]
    assert {b["issue"]["fingerprint"] for b in bodies} == {"fp-crash"}
    assert len({b["delivery_id"] for b in bodies}) == 1  # retries of one delivery, never a second alert
