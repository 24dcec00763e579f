"""A streamed httpx response the app abandons half-way (it raises inside its loop over the chunks, as the usual
openai streaming loop does on an empty `choices` chunk) is recorded as consumed, chunk by chunk, and replayed
exactly; reading further than the app did names the real cause."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

import fluxrun
from fluxrun.errors import ReplayDivergence

EVENTS = [
    {"choices": [{"delta": {"content": "Hel"}}]},
    {"choices": [{"delta": {"content": "lo"}}]},
    {"choices": []},  # a usage chunk: the loop below breaks on it
    {"choices": [{"delta": {"content": "!"}}]},
]
MODE = {"fixed": False}


class SSE(httpx.SyncByteStream, httpx.AsyncByteStream):
    """Server-sent events, one network chunk per event."""

    def __iter__(self) -> Iterator[bytes]:
        for event in EVENTS:
            yield f"data: {json.dumps(event)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self:
            yield chunk


def upstream(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=SSE())


def text_of(lines: list[str]) -> str:
    text = ""
    for line in lines:
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if MODE["fixed"] and not chunk["choices"]:
            continue
        text += chunk["choices"][0]["delta"]["content"]  # IndexError on the empty chunk
    return text


@fluxrun.capture
def complete() -> str:
    with httpx.Client(transport=httpx.MockTransport(upstream)) as client:
        with client.stream("GET", "https://llm.test/v1/chat") as response:
            lines: list[str] = []
            for line in response.iter_lines():
                lines.append(line)
                text_of(lines)  # the app processes each chunk as it arrives, and raises mid-stream
            return text_of(lines)


@fluxrun.capture
async def complete_async() -> str:
    async with httpx.AsyncClient(transport=httpx.MockTransport(upstream)) as client:
        async with client.stream("GET", "https://llm.test/v1/chat") as response:
            lines: list[str] = []
            async for line in response.aiter_lines():
                lines.append(line)
                text_of(lines)
            return text_of(lines)


@pytest.fixture(autouse=True)
def unfixed() -> Iterator[None]:
    MODE["fixed"] = False
    yield
    MODE["fixed"] = False


def test_an_abandoned_stream_records_what_was_consumed_and_replays_it(captured) -> None:
    with pytest.raises(IndexError):
        complete()
    [event] = captured.events("http")
    body = event["data"]["response"]["body"]
    assert body["complete"] is False
    assert body["chunks"][:3] == [len(f"data: {json.dumps(e)}\n\n") for e in EVENTS[:3]]
    [path] = captured.files()
    for _ in range(3):
        result = fluxrun.replay.run(path, captured.keys.replay, expect="reproduce")
        assert result.new.error_type == "builtins:IndexError"


def test_an_abandoned_async_stream_replays_the_same(captured) -> None:
    import asyncio

    with pytest.raises(IndexError):
        asyncio.run(complete_async())
    [path] = captured.files()
    result = fluxrun.replay.run(path, captured.keys.replay, expect="reproduce")
    assert result.new.error_type == "builtins:IndexError"


def test_reading_past_what_the_app_consumed_names_the_real_cause(captured) -> None:
    with pytest.raises(IndexError):
        complete()
    [path] = captured.files()
    MODE["fixed"] = True  # the fix reads on past the chunk where production stopped
    with pytest.raises(ReplayDivergence, match="the app stopped reading this streamed response") as caught:
        fluxrun.replay.run(path, captured.keys.replay)
    assert "max_body_size" not in str(caught.value)
