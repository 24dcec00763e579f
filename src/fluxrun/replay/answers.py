"""Answers a test supplies for calls the recording lacks, so a fix that makes a new call can be confirmed.

A correct fix often makes a call production never made: a fallback fetch, a flag read from the
environment, a new host call. The recording cannot answer it, so replay would diverge. A test supplies
the answer instead, in the style of respx::

    answers = fluxrun.replay.Answers()
    answers.http("GET", "https://pricing.test/v2/items/7", json={"price": 10})
    answers.env("PRICING_FALLBACK", "on")
    answers.boundary("inventory.reserve", result={"count": 3})
    result = fluxrun.replay.run("tests/fluxrun/x.fluxrun", answers=answers)
    result.supplied      # what was answered from here, and how often

Strict on purpose: a supplied answer is used only when no recorded call matches, every use is listed in
the result, and a call with neither a recorded nor a supplied answer still diverges.
"""

from __future__ import annotations

import base64
from collections import Counter
from typing import Any, cast

import orjson

from fluxrun.model.schema import AnyEvent
from fluxrun.model.values import encode

__all__ = ["Answers"]


class Answers:
    """Answers for calls missing from a recording: HTTP requests, env variables and boundaries."""

    def __init__(self) -> None:
        self._http: list[dict[str, Any]] = []
        self._env: dict[str, dict[str, Any]] = {}
        self._host: dict[str, dict[str, Any]] = {}
        self.used: Counter[str] = Counter()

    def http(
        self,
        method: str,
        url: str,
        *,
        status: int = 200,
        json: Any = None,
        text: str | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answers:
        """Answer `method url` (query order does not matter; any body) with this response."""
        if sum(x is not None for x in (json, text, content)) > 1:
            raise ValueError("give the response body as one of json=, text= or content=")
        response_headers = dict(headers or {})
        if json is not None:
            content = orjson.dumps(json)
            response_headers.setdefault("content-type", "application/json")
        elif text is not None:
            content = text.encode()
            response_headers.setdefault("content-type", "text/plain; charset=utf-8")
        raw = content or b""
        self._http.append(
            {
                "kind": "http",
                "call": f"{method.upper()} {url}",
                "data": {
                    "request": {"method": method.upper(), "url": url, "headers": [], "body": None},
                    "response": {
                        "status": status,
                        "headers": [[k, v] for k, v in response_headers.items()],
                        "body": {"base64": base64.b64encode(raw).decode(), "size": len(raw), "encoding": "decoded"},
                    },
                },
            }
        )
        return self

    def env(self, key: str, value: str | None) -> Answers:
        """Answer reads of the variable `key` with `value` (None: not set)."""
        data: dict[str, Any] = {"key": key, "present": value is not None}
        if value is not None:
            data["value"] = value
        self._env[key] = {"kind": "env", "call": f"env {key}", "data": data}
        return self

    def boundary(self, name: str, *, result: Any = None) -> Answers:
        """Answer calls of the boundary `name` (with any arguments) with `result`."""
        self._host[name] = {"kind": "host", "call": name, "data": {"name": name, "result": encode(result)}}
        return self

    # -- what the replay session asks ---------------------------------------------------------------

    def answer(self, kind: str, call: str, name: str | None, match: Any, task: str) -> AnyEvent | None:
        """A synthetic event for a call nothing recorded answers, or None."""
        found: dict[str, Any] | None = None
        if kind == "http":
            found = next((a for a in self._http if match is None or match(a) is None), None)
        elif kind == "host":
            found = self._host.get(name or call)
        return self._use(found, task)

    def env_event(self, key: str, task: str) -> AnyEvent | None:
        return self._use(self._env.get(key), task)

    def _use(self, answer: dict[str, Any] | None, task: str) -> AnyEvent | None:
        if answer is None:
            return None
        self.used[f"{answer['kind']} {answer['call']}"] += 1
        # no start_ns or dur_ns: a supplied answer took no time, and replay reads neither
        return cast(AnyEvent, {**answer, "seq": -1, "task": task, "site": "supplied by the test", "supplied": True})

    def report(self) -> list[str]:
        """What was answered from here, for the result: `http GET https://... (2 calls)`."""
        return [f"{call} ({n} call{'s' if n != 1 else ''})" for call, n in self.used.items()]

    def unused(self) -> list[str]:
        supplied = [f"http {a['call']}" for a in self._http]
        supplied += [f"env env {k}" for k in self._env] + [f"host {n}" for n in self._host]
        return [s for s in supplied if s not in self.used]
