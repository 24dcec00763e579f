"""Mask the secrets in an opened payload before the agent hands it to a browser.

The payload is everything the app saw (it was encrypted for the owner), so an unlock that is not
`protected` shows it through the same scrub rules as the plaintext summary: headers (credentials masked,
the auth scheme kept), URLs (userinfo, sensitive query parameters), bodies by content type (JSON and form
fields by name, anything else by value patterns), env values (by the variable's name and by value
patterns), boundary arguments and results, log and error messages, and the response the app returned.
Anything this module does not know goes through `Scrubber.data`, so a new payload field is masked by
default rather than leaked.

What it cannot mask: a secret with no recognisable shape and no telling name in front of it (a positional
argument, "the password is hunter2"). Those are exactly what protected grants exist for the other way round.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from fluxrun.scrub import MASK, Scrubber

__all__ = ["mask_payload", "mask_text"]

# Top-level payload fields that describe the capture, not the app's data.
_PLAIN_TOP = frozenset({"format", "bundle_id", "execution", "entry", "started_at", "sdk", "release", "environment"})
_PLAIN_EVENT = frozenset({"seq", "kind", "task", "site", "start_ns", "dur_ns"})
_PLAIN_ERROR = frozenset({"type", "fingerprint"})
_PLAIN_FRAME = frozenset({"file", "line", "function", "module", "in_app"})
_PLAIN_HTTP = frozenset({"method", "status", "reason", "http_version", "redirects", "client", "stream"})


def mask_text(value: object, scrubber: Scrubber) -> Any:
    """A single string (or anything) through the scrubber: what replay messages shown to users get."""
    return scrubber.data(value)


def mask_payload(payload: dict[str, Any], scrubber: Scrubber) -> dict[str, Any]:
    """Return a masked copy of an opened bundle's payload (the input is not changed).

    The result keeps the payload's shape (same keys, same lists) so the dashboard renders masked and
    unmasked payloads with the same code; masked values read ``[Filtered]``.
    """
    out: dict[str, Any] = {}
    for key, value in payload.items():
        if key in _PLAIN_TOP:
            out[key] = value
        elif key == "request" and isinstance(value, dict):
            out[key] = _request(value, scrubber)
        elif key == "events" and isinstance(value, list):
            out[key] = [_event(e, scrubber) if isinstance(e, dict) else scrubber.data(e) for e in value]
        elif key == "outcome" and isinstance(value, dict):
            out[key] = _outcome(value, scrubber)
        else:
            out[key] = scrubber.data(value)
    return out


# --- pieces -------------------------------------------------------------------------------------------


def _fields(
    value: dict[str, Any],
    scrubber: Scrubber,
    plain: frozenset[str],
    special: dict[str, Callable[[Any], Any]],
) -> dict[str, Any]:
    """Copy `value`: plain fields as they are, special ones through their handler, the rest through data()."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key in special:
            out[key] = special[key](item)
        elif key in plain:
            out[key] = item
        elif scrubber.is_sensitive_key(key) and _maskable(item):
            out[key] = MASK
        else:
            out[key] = scrubber.data(item)
    return out


def _maskable(value: object) -> bool:
    return not (value is None or isinstance(value, bool) or value == "")


def _headers(value: Any, scrubber: Scrubber) -> Any:
    if not isinstance(value, list | tuple):
        return scrubber.data(value)
    return [[name, masked] for name, masked in scrubber.headers(value)]


def _content_type(headers: Any) -> str | None:
    if isinstance(headers, list | tuple):
        for item in headers:
            if isinstance(item, list | tuple) and len(item) == 2 and str(item[0]).lower() == "content-type":
                return str(item[1])
    return None


def _body(body: Any, content_type: str | None, scrubber: Scrubber) -> Any:
    """A recorded body ``{"text": ...}`` or ``{"base64": ...}``, scrubbed by its content type."""
    if not isinstance(body, dict):
        return scrubber.data(body)
    out = dict(body)
    text = body.get("text")
    if isinstance(text, str):
        masked = scrubber.body(text, content_type)
        out["text"] = masked.decode("utf-8", "replace") if isinstance(masked, bytes) else masked
    encoded = body.get("base64")
    if isinstance(encoded, str):
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            out["base64"] = MASK
        else:
            scrubbed = scrubber.body(raw, content_type)
            if scrubbed != raw:
                data = scrubbed if isinstance(scrubbed, bytes) else scrubbed.encode("utf-8", "surrogateescape")
                out["base64"] = base64.b64encode(data).decode("ascii")
    return out


def _query(query: Any, scrubber: Scrubber) -> Any:
    if not isinstance(query, str) or not query:
        return scrubber.data(query)
    masked = scrubber.url("?" + query)
    return masked[1:] if masked.startswith("?") else scrubber.text(query)


def _message(scrubber: Scrubber) -> Callable[[Any], Any]:
    return lambda value: scrubber.text(value) if isinstance(value, str) else scrubber.data(value)


def _frames(frames: Any, scrubber: Scrubber) -> Any:
    if not isinstance(frames, list):
        return scrubber.data(frames)
    return [
        _fields(f, scrubber, _PLAIN_FRAME, {"code": _message(scrubber)}) if isinstance(f, dict) else f for f in frames
    ]


def _error(error: Any, scrubber: Scrubber) -> Any:
    """A recorded exception: its type and fingerprint stay, message, source lines and values are masked."""
    if not isinstance(error, dict):
        return scrubber.data(error)
    return _fields(
        error,
        scrubber,
        _PLAIN_ERROR,
        {
            "message": _message(scrubber),
            "frames": lambda frames: _frames(frames, scrubber),
            "chain": lambda chain: [_error(e, scrubber) for e in chain] if isinstance(chain, list) else chain,
        },
    )


def _http_message(message: Any, scrubber: Scrubber) -> Any:
    """An HTTP request or response as recorded: URL, headers and body each scrubbed their own way."""
    if not isinstance(message, dict):
        return scrubber.data(message)
    content_type = _content_type(message.get("headers"))
    return _fields(
        message,
        scrubber,
        _PLAIN_HTTP,
        {
            "url": lambda url: scrubber.url(url) if isinstance(url, str) else scrubber.data(url),
            "headers": lambda headers: _headers(headers, scrubber),
            "body": lambda body: _body(body, content_type, scrubber),
        },
    )


def _request(request: dict[str, Any], scrubber: Scrubber) -> dict[str, Any]:
    content_type = _content_type(request.get("headers"))
    return _fields(
        request,
        scrubber,
        frozenset({"method", "route", "scheme", "http_version", "root_path", "server", "traceparent"}),
        {
            "headers": lambda headers: _headers(headers, scrubber),
            "path": lambda path: scrubber.url(path) if isinstance(path, str) else scrubber.data(path),
            "query_string": lambda query: _query(query, scrubber),
            "body": lambda body: _body(body, content_type, scrubber),
        },
    )


def _http_call(call: Any, scrubber: Scrubber) -> Any:
    """``"GET https://user:pw@host/x?token=..."`` -> the method, and the URL scrubbed as a URL."""
    if not isinstance(call, str):
        return scrubber.data(call)
    method, space, url = call.partition(" ")
    return f"{method} {scrubber.url(url)}" if space else scrubber.url(call)


def _event(event: dict[str, Any], scrubber: Scrubber) -> dict[str, Any]:
    kind = event.get("kind")
    special: dict[str, Callable[[Any], Any]] = {
        "call": (lambda call: _http_call(call, scrubber)) if kind == "http" else _message(scrubber),
        "data": lambda data: _event_data(kind, data, scrubber, event.get("call")),
        "error": lambda error: _error(error, scrubber),
    }
    return _fields(event, scrubber, _PLAIN_EVENT, special)


def _event_data(kind: Any, data: Any, scrubber: Scrubber, call: Any) -> Any:
    if not isinstance(data, dict):
        return scrubber.data(data)
    if kind == "http":
        return _fields(
            data,
            scrubber,
            _PLAIN_HTTP,
            {
                "request": lambda message: _http_message(message, scrubber),
                "response": lambda message: _http_message(message, scrubber),
            },
        )
    if kind == "env":
        name = data.get("key")
        sensitive = isinstance(name, str) and scrubber.is_sensitive_key(name)
        return _fields(
            data,
            scrubber,
            frozenset({"key", "present"}),
            {"value": lambda value: MASK if sensitive and _maskable(value) else scrubber.data(value)},
        )
    if kind == "host":
        # Arguments and results through data(): values under telling names (password=..., {"token": ...})
        # are masked whole, strings by value patterns. `name` is the boundary's declared name.
        return _fields(data, scrubber, frozenset({"name"}), {})
    if kind == "log":
        return _fields(data, scrubber, frozenset({"logger", "level", "file", "line"}), {"message": _message(scrubber)})
    if kind == "random" and isinstance(call, str) and scrubber.is_sensitive_key(call):
        # secrets.token_hex() and friends: the value *is* a freshly made secret (a session id, a reset token).
        return {key: MASK if key == "value" and _maskable(item) else item for key, item in data.items()}
    return _fields(data, scrubber, frozenset({"seconds", "permutation"}), {})


def _outcome(outcome: dict[str, Any], scrubber: Scrubber) -> dict[str, Any]:
    return _fields(
        outcome,
        scrubber,
        frozenset({"kind", "status"}),
        {
            "error": lambda error: _error(error, scrubber),
            "response": lambda response: _http_message(response, scrubber),
        },
    )
