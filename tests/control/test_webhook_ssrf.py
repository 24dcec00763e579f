"""Webhooks go to public addresses only (issue 16, "SSRF"): a member could point a webhook at loopback or
link-local addresses, the server POSTed there and showed admins the start of the answer.

Through real servers on both backends: targets on private, loopback and link-local addresses are refused when
a rule is made, and a rule whose target is on loopback by the time an alert is sent is not sent. In process,
with a stand-in resolver: a name that turns private between the check and the send (DNS rebinding) is refused,
and the connection goes to the address that was checked."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from control_helpers import BACKENDS, GraphQLFailed, Server, project_ids, provision, wait_until
from servers import free_port

from fluxrun_server.control.egress import TargetRefused, check_target, post_webhook


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers with something internal, and remembers each request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                receiver.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                body = b"INTERNAL-ONLY admin panel"
                self.send_response(500)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture(scope="module", params=BACKENDS)
def server(request: pytest.FixtureRequest, make_server: Any, keys: Any) -> Server:
    srv: Server = make_server(request.param, alert_max_attempts="1")  # private targets not allowed (the default)
    provision(srv, keys.capture)
    srv.start()
    return srv


def create_rule(server: Server, project_id: int, target: str) -> dict[str, Any]:
    return server.gql(
        "member",
        'mutation($p: Int!, $t: String!) { createAlertRule(projectId: $p, kind: "new_issue", channel: "webhook", '
        "target: $t) { id } }",
        p=project_id,
        t=target,
    )


def test_targets_on_private_loopback_and_link_local_addresses_are_refused(server: Server, receiver: Receiver) -> None:
    shop = project_ids(server)["shop"]
    for target in (
        f"http://127.0.0.1:{receiver.port}/hook",
        f"http://localhost:{receiver.port}/hook",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[::1]:8080/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.1/hook",
        "http://100.64.0.1/hook",
        "http://0.0.0.0:9/hook",
        "http://2130706433/hook",  # 127.0.0.1 as one number
    ):
        with pytest.raises(GraphQLFailed) as refused:
            create_rule(server, shop, target)
        assert refused.value.code == "BAD_REQUEST", target
        assert "non-public address" in str(refused.value), target
    assert receiver.requests == []


def test_a_target_on_loopback_at_send_time_is_not_posted_to(
    server: Server, receiver: Receiver, keys: Any, seal: Any
) -> None:
    """A rule whose target is private by the time an alert goes out (a rule made before this check, or a name
    that resolved elsewhere when it was made) is refused by the deliverer, and nothing internal is shown."""
    from sqlmodel import Session

    from fluxrun_server.control.models import AlertRule
    from fluxrun_server.index.database import make_engine
    from fluxrun_server.settings import ServerSettings

    shop = project_ids(server)["shop"]
    path = f"/send-time-{server.backend}"
    settings = ServerSettings(data_dir=server.data_dir, database_url=server.env.get("FLUXRUN_SERVER_DATABASE_URL"))
    engine = make_engine(settings.resolved_database_url)
    with Session(engine) as session:
        session.add(
            AlertRule(
                project_id=shop,
                kind="new_issue",
                channel="webhook",
                target=f"http://127.0.0.1:{receiver.port}{path}",
                secret="s",
            )
        )
        session.commit()
    engine.dispose()

    assert server.ingest(server.keys["ingest"], [seal(fingerprint=f"fp-ssrf-{server.backend}")[1]]).status_code == 202

    def dead() -> list[dict[str, Any]]:
        query = 'query($p: Int) { deliveries(status: "dead", projectId: $p) { lastError } }'
        found: list[dict[str, Any]] = server.gql("admin", query, p=shop)["deliveries"]
        return found

    letters = wait_until(dead, timeout=30)
    assert letters, "the alert was neither refused nor delivered"
    assert "non-public address" in letters[0]["lastError"]
    assert "INTERNAL-ONLY" not in letters[0]["lastError"]
    assert [p for p, _ in receiver.requests if p == path] == []


# -- in process: the resolver answers what the test says ---------------------------------------------------------


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[list[str]]]:
    """`resolver[name] = [[first answer], [second answer], ...]`: each lookup of `name` takes the next answer
    (the last one repeats); addresses and other names go to the real resolver."""
    answers: dict[str, list[list[str]]] = {}
    real = socket.getaddrinfo

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in answers:
            queue = answers[host]
            addresses = queue.pop(0) if len(queue) > 1 else queue[0]
            return [
                (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in addresses
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return answers


def test_a_name_that_turns_private_after_the_check_is_refused_at_send_time(
    resolver: dict[str, list[list[str]]], receiver: Receiver
) -> None:
    """DNS rebinding: public when the rule is made, 127.0.0.1 when the alert goes out."""
    resolver["rebind.example"] = [["93.184.216.34"], ["127.0.0.1"]]
    url = f"http://rebind.example:{receiver.port}/rebind"
    check_target(url)  # public now: the rule is made
    with pytest.raises(TargetRefused, match=r"127\.0\.0\.1, a loopback, private"):
        post_webhook(url, b"{}", {}, timeout=2)
    assert [p for p, _ in receiver.requests if p == "/rebind"] == []


def test_a_name_with_one_private_address_among_public_ones_is_refused(resolver: dict[str, list[list[str]]]) -> None:
    resolver["mixed.example"] = [["93.184.216.34", "10.0.0.7"]]
    with pytest.raises(TargetRefused, match=r"10\.0\.0\.7"):
        check_target("https://mixed.example/hook")


def test_the_post_goes_to_the_address_that_was_checked(
    resolver: dict[str, list[list[str]]], receiver: Receiver
) -> None:
    """Checked as 127.0.0.1 (allowed here, as an operator may), then the name moves to 127.0.0.2, where nothing
    listens: the POST still reaches the checked address, with the name in its Host header."""
    resolver["pinned.example"] = [["127.0.0.1"], ["127.0.0.2"]]
    answer = post_webhook(
        f"http://pinned.example:{receiver.port}/pinned", b"{}", {"x-test": "1"}, timeout=5, allow_private=True
    )
    assert answer.status == 500 and answer.text == "INTERNAL-ONLY admin panel"
    [(_, headers)] = [r for r in receiver.requests if r[0] == "/pinned"]
    assert headers["host"] == f"pinned.example:{receiver.port}" and headers["x-test"] == "1"
