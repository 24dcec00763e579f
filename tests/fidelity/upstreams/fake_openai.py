"""An OpenAI-compatible upstream for the corpus: `POST /v1/chat/completions`, answered as the real API does.

- `model: "gpt-down"`: HTTP 500 with the API's error object and an `x-request-id`, every time (an outage).
- `stream: true`: a chat.completion.chunk SSE stream, one network chunk per event, flushed apart; the last
  event is the usage chunk (`"choices": []`, sent when `stream_options.include_usage` is on), written
  together with `data: [DONE]`, as the two often arrive.
`GET /_hits` counts the API requests served, so a test can show the SDK's retries reached it.
"""

from __future__ import annotations

import asyncio
import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

HITS = {"n": 0}
WORDS = ["Flux", "Run ", "turns ", "failures ", "into ", "tests."]


def chunk(index: int, delta: dict[str, str], finish: str | None = None) -> dict[str, object]:
    return {
        "id": "chatcmpl-fidelity1",
        "object": "chat.completion.chunk",
        "created": 1_790_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_fidelity",
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def event(data: object) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


async def sse(include_usage: bool):
    yield event(chunk(0, {"role": "assistant", "content": ""}))
    for word in WORDS:
        await asyncio.sleep(0.01)
        yield event(chunk(0, {"content": word}))
    await asyncio.sleep(0.01)
    yield event(chunk(0, {}, finish="stop"))
    await asyncio.sleep(0.01)
    tail = b""
    if include_usage:
        usage = {"prompt_tokens": 12, "completion_tokens": len(WORDS), "total_tokens": 12 + len(WORDS)}
        tail = event({**chunk(0, {}), "choices": [], "usage": usage})
    yield tail + b"data: [DONE]\n\n"


async def completions(request: Request) -> Response:
    HITS["n"] += 1
    body = await request.json()
    if request.headers.get("authorization") != "Bearer sk-fidelity-openai-0123456789":
        return JSONResponse({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                       "param": None, "code": "invalid_api_key"}}, status_code=401)  # fmt: skip
    if body.get("model") == "gpt-down":
        error = {"message": "The server had an error while processing your request. Sorry about that!",
                 "type": "server_error", "param": None, "code": None}  # fmt: skip
        return JSONResponse({"error": error}, status_code=500, headers={"x-request-id": f"req_{HITS['n']}"})
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(sse(include_usage), media_type="text/event-stream")
    return JSONResponse(
        {
            "id": "chatcmpl-fidelity2",
            "object": "chat.completion",
            "created": 1_790_000_000,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(WORDS)},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
        }
    )


async def hits(request: Request) -> Response:
    return JSONResponse({"hits": HITS["n"]})


app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"]), Route("/_hits", hits)])
