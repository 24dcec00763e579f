"""A card-payment upstream for the corpus: `POST /v1/charges`, in the error schema of its API version 2.

A declined card (the test card `4000000000000002`) is answered 402 in the new schema, a list of `errors`,
where version 1 (which the app was written against) answered one `error` object. Every charge request that
reaches it is appended to the ledger file `PAYMENT_LEDGER`, so a count survives a restart: `GET /_charges`.
"""

from __future__ import annotations

import json
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

API_KEY = "sk_live_fidelity_payments_42"
DECLINED_CARD = "4000000000000002"


def ledger() -> list[str]:
    try:
        with open(os.environ["PAYMENT_LEDGER"]) as file:
            return file.read().splitlines()
    except FileNotFoundError:
        return []


async def charges(request: Request) -> Response:
    body = await request.json()
    with open(os.environ["PAYMENT_LEDGER"], "a") as file:
        file.write(json.dumps(body) + "\n")
    number = len(ledger())
    if request.headers.get("authorization") != f"Bearer {API_KEY}":
        return JSONResponse({"errors": [{"type": "auth_error", "code": "invalid_api_key"}]}, status_code=401)
    if body.get("card", {}).get("number") == DECLINED_CARD:
        error = {"type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds",
                 "detail": "Your card has insufficient funds."}  # fmt: skip
        return JSONResponse({"errors": [error], "request_id": f"req_{number}"}, status_code=402)
    return JSONResponse({"id": f"ch_{number}", "status": "succeeded", "amount": body.get("amount")})


async def charge_count(request: Request) -> Response:
    return JSONResponse({"charges": len(ledger())})


app = Starlette(routes=[Route("/v1/charges", charges, methods=["POST"]), Route("/_charges", charge_count)])
