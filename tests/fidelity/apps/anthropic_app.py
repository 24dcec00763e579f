"""Scenario anthropic: a reply route calls `client.messages.create`; the SDK reads ANTHROPIC_API_KEY and
ANTHROPIC_BASE_URL from the environment inside the request and retries a 529 twice with backoff and jitter.

`app` lets the SDK's OverloadedError through (500); `fixed_app` answers that replies are delayed.
"""

from __future__ import annotations

from typing import Any

import anthropic
from fastapi import FastAPI

import fluxrun

fluxrun.init()  # FLUXRUN_CAPTURE_KEY and FLUXRUN_DIR come from the environment


def build(fixed: bool) -> FastAPI:
    app = FastAPI()
    app.add_middleware(fluxrun.FluxRunMiddleware)

    @app.post("/replies")
    async def reply(payload: dict[str, Any]) -> dict[str, Any]:
        client = anthropic.AsyncAnthropic()  # key and base URL from the environment, read here
        try:
            message = await client.messages.create(
                model="claude-sonnet-4-5",
                max_tokens=256,
                messages=[{"role": "user", "content": payload["question"]}],
            )
        except anthropic.OverloadedError:
            if not fixed:
                raise
            return {"reply": None, "status": "delayed"}
        return {"reply": message.content[0].text}

    return app


app = build(fixed=False)
fixed_app = build(fixed=True)
