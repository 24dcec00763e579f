"""Scenario Flask + requests: checkout charges a card through `requests` against the payment upstream.

PAYMENT_URL and PAYMENT_API_KEY are read inside the request. The charge carries an idempotency key (uuid4)
and the time it was requested, so a replay must serve the clock and randomness from the tape to send the same
request. The upstream moved to a new error schema (`errors: [...]`); `app` still reads `error`, so a
declined card is a KeyError and a 500. `fixed_app` reads both schemas and answers 402 with the decline code.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import requests
from flask import Flask, jsonify, request

import fluxrun

fluxrun.init()  # FLUXRUN_CAPTURE_KEY and FLUXRUN_DIR come from the environment


def decline_reason(answer: dict[str, Any], fixed: bool) -> str:
    if fixed and "errors" in answer:  # API version 2: a list of errors
        first = answer["errors"][0]
        return str(first.get("decline_code") or first["code"])
    return str(answer["error"]["code"])  # API version 1: one error object


def build(fixed: bool) -> Flask:
    app = Flask(f"payments{'_fixed' if fixed else ''}")
    app.wsgi_app = fluxrun.FluxRunWSGIMiddleware(app.wsgi_app)  # type: ignore[method-assign]

    @app.post("/checkout")
    def checkout() -> Any:
        order = request.get_json()
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {os.environ['PAYMENT_API_KEY']}"
        answer = session.post(
            f"{os.environ['PAYMENT_URL']}/v1/charges",
            json={"amount": order["amount"], "currency": "eur", "card": order["card"],
                  "requested_at": int(time.time())},
            headers={"Idempotency-Key": str(uuid.uuid4())},
            timeout=5,
        )  # fmt: skip
        if answer.status_code == 402:
            return jsonify(order=order["id"], declined=decline_reason(answer.json(), fixed)), 402
        answer.raise_for_status()
        return jsonify(order=order["id"], charge=answer.json()["id"])

    return app


app = build(fixed=False)
fixed_app = build(fixed=True)
