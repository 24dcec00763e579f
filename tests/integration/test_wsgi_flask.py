"""A Flask app wrapped in FluxRunWSGIMiddleware: requests, bodies, errors and streamed responses."""

from __future__ import annotations

import os
import time

import pytest
from flask import Flask, Response, request

import fluxrun
from fluxrun.model.values import decode


@fluxrun.boundary("email.send")
def send_email(to: str) -> str:
    return f"queued:{to}"


def make_app() -> Flask:
    app = Flask("shop_wsgi")

    @app.post("/signup")
    def signup():
        data = request.get_json()
        send_email(data["email"])
        os.environ.get("SIGNUP_PLAN")
        raise RuntimeError(f"plan missing for {data['email']}")

    @app.get("/report")
    def report():
        return Response("broken", status=503)

    @app.get("/stream")
    def stream():
        def chunks():
            yield "a"
            time.time()  # IO while the body streams still belongs to the request
            raise ValueError("stream broke")

        return Response(chunks())

    @app.get("/ok")
    def ok():
        return "fine"

    app.wsgi_app = fluxrun.FluxRunWSGIMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    return app


@pytest.fixture
def client(captured):
    app = make_app()
    app.config["PROPAGATE_EXCEPTIONS"] = False
    return app.test_client()


def test_an_exception_is_recorded_with_request_body_and_io(client, captured):
    # a WSGI server closes the response iterable when done; the execution ends there
    with client.post(
        "/signup?ref=ad", json={"email": "ada@example.test"}, headers={"X-Request-ID": "req-1"}
    ) as response:
        assert response.status_code == 500
    payload = captured.one()
    assert payload["execution"] == "wsgi"
    request_state = payload["request"]
    assert (request_state["method"], request_state["path"], request_state["query_string"]) == (
        "POST",
        "/signup",
        "ref=ad",
    )
    assert request_state["request_id"] == "req-1"
    assert request_state["body"]["text"] == '{"email": "ada@example.test"}'
    assert [e["call"] for e in payload["events"]] == ["email.send", "env SIGNUP_PLAN", "ERROR shop_wsgi"]
    assert decode(payload["events"][0]["data"]["result"]) == "queued:ada@example.test"
    # Flask turns the exception into a 500 answer itself; the recording has the answer, and the exception
    # Flask handled (heard through its got_request_exception signal) with the route's rule
    assert payload["outcome"]["status"] == 500
    assert payload["outcome"]["kind"] == "error"
    assert payload["outcome"]["error"]["type"] == "builtins:RuntimeError"
    assert payload["outcome"]["response"]["status"] == 500
    assert request_state["route"] == "/signup"


def test_a_5xx_answer_is_kept_and_a_2xx_is_not(client, captured):
    with client.get("/ok") as response:
        assert response.status_code == 200
    with client.get("/report") as response:
        assert response.status_code == 503
    payload = captured.one()
    assert payload["outcome"]["response"]["body"]["text"] == "broken"


def test_io_and_errors_while_streaming_the_body_are_recorded(captured):
    app = make_app()
    client = app.test_client()
    with pytest.raises(ValueError, match="stream broke"), client.get("/stream") as response:
        response.get_data()
    payload = captured.one()
    assert [e["call"] for e in payload["events"]] == ["time.time"]
    assert payload["outcome"]["error"]["type"] == "builtins:ValueError"


def test_exceptions_propagating_out_of_the_app_are_recorded(captured):
    app = make_app()
    app.config["PROPAGATE_EXCEPTIONS"] = True
    with pytest.raises(RuntimeError, match="plan missing"):
        app.test_client().post("/signup", json={"email": "b@example.test"})
    payload = captured.one()
    assert payload["outcome"]["kind"] == "error"
    assert payload["outcome"]["error"]["message"] == "plan missing for b@example.test"
