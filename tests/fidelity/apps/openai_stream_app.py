"""Scenario openai streamed: `stream=True` with usage included, and the usual loop over the chunks.

`app` indexes `chunk.choices[0]`, which raises IndexError on the usage chunk (its `choices` is empty): the
stream is abandoned half-way, never closed. `fixed_app` skips chunks without choices.
"""

from __future__ import annotations

from typing import Any

import openai
from fastapi import FastAPI

import fluxrun

fluxrun.init()  # FLUXRUN_CAPTURE_KEY and FLUXRUN_DIR come from the environment


def build(fixed: bool) -> FastAPI:
    app = FastAPI()
    app.add_middleware(fluxrun.FluxRunMiddleware)

    @app.post("/drafts")
    def draft(payload: dict[str, Any]) -> dict[str, str]:
        client = openai.OpenAI()  # key and base URL from the environment, read here
        stream = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": payload["prompt"]}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text = ""
        for chunk in stream:
            if fixed and not chunk.choices:
                continue
            text += chunk.choices[0].delta.content or ""
        return {"draft": text}

    return app


app = build(fixed=False)
fixed_app = build(fixed=True)
