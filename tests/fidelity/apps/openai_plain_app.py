"""Scenario openai plain: a summary route calls `client.chat.completions.create`; the SDK reads OPENAI_API_KEY
and OPENAI_BASE_URL from the environment inside the request and retries a 500 with backoff and jitter.

`app` answers 502 when the SDK gives up; `fixed_app` answers a degraded summary instead.
"""

from __future__ import annotations

import os
from typing import Any

import openai
from fastapi import FastAPI
from fastapi.responses import JSONResponse

import fluxrun

fluxrun.init()  # FLUXRUN_CAPTURE_KEY and FLUXRUN_DIR come from the environment


def build(fixed: bool) -> FastAPI:
    app = FastAPI()
    app.add_middleware(fluxrun.FluxRunMiddleware)

    @app.post("/summaries")
    def summarize(payload: dict[str, Any]) -> JSONResponse:
        client = openai.OpenAI(max_retries=1)  # key and base URL from the environment, read here
        try:
            completion = client.chat.completions.create(
                model=os.environ.get("SUMMARY_MODEL", "gpt-4o-mini"),
                messages=[{"role": "system", "content": "Summarize in one line."},
                          {"role": "user", "content": payload["text"]}],
            )  # fmt: skip
        except openai.APIStatusError as exc:
            if fixed:
                return JSONResponse({"summary": payload["text"][:40], "degraded": True})
            detail = f"{type(exc).__name__}: upstream answered {exc.status_code} (request {exc.request_id})"
            return JSONResponse({"error": detail}, status_code=502)
        return JSONResponse({"summary": completion.choices[0].message.content})

    return app


app = build(fixed=False)
fixed_app = build(fixed=True)
