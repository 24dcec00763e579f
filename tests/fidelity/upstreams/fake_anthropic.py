"""An Anthropic-compatible upstream for the corpus: `POST /v1/messages` answers 529 `overloaded_error`, as the
real API does when it is overloaded, with its `request-id` header. `GET /_hits` counts the API requests."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

HITS = {"n": 0}


async def messages(request: Request) -> Response:
    HITS["n"] += 1
    await request.json()
    key = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
    if key != "sk-ant-fidelity-0123456789":  # SDK releases send x-api-key or a bearer header
        error = {"type": "authentication_error", "message": "invalid x-api-key"}
        return JSONResponse({"type": "error", "error": error}, status_code=401)
    error = {"type": "overloaded_error", "message": "Overloaded"}
    return JSONResponse({"type": "error", "error": error}, status_code=529, headers={"request-id": f"req_{HITS['n']}"})


async def hits(request: Request) -> Response:
    return JSONResponse({"hits": HITS["n"]})


app = Starlette(routes=[Route("/v1/messages", messages, methods=["POST"]), Route("/_hits", hits)])
