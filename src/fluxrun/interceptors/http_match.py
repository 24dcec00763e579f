"""How a request made at replay is matched to a recorded one: small named matchers, vcrpy style.

A request matches when every matcher agrees. Bodies are compared by meaning, not bytes: JSON key
order, form field order and multipart boundaries do not matter.
"""

from __future__ import annotations

import email.parser
import email.policy
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from fluxrun._diff import short_diff
from fluxrun.answering import Matcher
from fluxrun.model.export import body_bytes
from fluxrun.model.schema import Body, EventDict, HttpData, HttpRequest

__all__ = ["MATCHERS", "RequestView", "http_matcher"]


class RequestView:
    """The parts of a live request the matchers compare."""

    def __init__(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes | None) -> None:
        self.method = method.upper()
        self.url = url
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


def _recorded_body(body: Body | None) -> bytes | None:
    if not body or body.get("streamed"):
        return None  # a streamed upload was not recorded: nothing to compare
    return body_bytes(body)


def _recorded_header(request: HttpRequest, name: str) -> str | None:
    for key, value in request.get("headers", []):
        if key.lower() == name:
            return str(value)
    return None


def method(recorded: HttpRequest, actual: RequestView) -> str | None:
    if recorded["method"].upper() == actual.method:
        return None
    return f"method differs: recorded {recorded['method']}, made {actual.method}"


def _url_key(url: str) -> tuple[str, str, str, list[tuple[str, str]]]:
    parts = urlsplit(url)
    return (
        parts.scheme,
        parts.netloc.lower(),
        parts.path or "/",
        sorted(parse_qsl(parts.query, keep_blank_values=True)),
    )


def url(recorded: HttpRequest, actual: RequestView) -> str | None:
    if _url_key(recorded["url"]) == _url_key(actual.url):
        return None
    return "url differs:\n" + short_diff(recorded["url"], actual.url)


def _multipart(content: bytes, content_type: str) -> list[tuple[list[tuple[str, str]], bytes]] | None:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + content
    )
    if not message.is_multipart():
        return None
    parts = []
    for part in message.iter_parts():
        headers = sorted((k.lower(), str(v)) for k, v in part.items())
        payload = part.get_payload(decode=True)
        parts.append((headers, payload if isinstance(payload, bytes) else b""))
    return parts


def _normalised(content: bytes, content_type: str | None) -> Any:
    ctype = (content_type or "").split(";")[0].strip().lower()
    try:
        if ctype == "application/json" or ctype.endswith("+json"):
            return ("json", orjson.loads(content))
        if ctype == "application/x-www-form-urlencoded":
            return ("form", sorted(parse_qsl(content.decode("latin-1"), keep_blank_values=True)))
        if ctype.startswith("multipart/") and content_type:
            parts = _multipart(content, content_type)
            if parts is not None:
                return ("multipart", parts)
    except Exception:
        pass
    if content[:1] in (b"{", b"["):  # JSON sent without a content type
        try:
            return ("json", orjson.loads(content))
        except orjson.JSONDecodeError:
            pass
    return ("bytes", content)


def body(recorded: HttpRequest, actual: RequestView) -> str | None:
    expected = _recorded_body(recorded.get("body"))
    if expected is None or actual.body is None:
        return None
    if (recorded.get("body") or {}).get("truncated"):
        return None if actual.body[: len(expected)] == expected else "body differs from the recorded (truncated) body"
    expected_n = _normalised(expected, _recorded_header(recorded, "content-type"))
    actual_n = _normalised(actual.body, actual.header("content-type"))
    if expected_n == actual_n:
        return None
    return "body differs:\n" + short_diff(expected.decode("utf-8", "replace"), actual.body.decode("utf-8", "replace"))


MATCHERS: tuple[Callable[[HttpRequest, RequestView], str | None], ...] = (method, url, body)


def http_matcher(actual: RequestView) -> Matcher:
    """A session matcher for one live request: the first failing matcher says why, or None."""

    def match(event: EventDict[HttpData]) -> str | None:
        recorded = event["data"]["request"]
        for matcher in MATCHERS:
            why = matcher(recorded, actual)
            if why is not None:
                return why
        return None

    return match
