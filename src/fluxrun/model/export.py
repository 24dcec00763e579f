"""Turn a finished `Recording` into the two halves of a bundle, off the request path.

`build_payload` is everything, for the owner only (it is encrypted): bodies, values, frames.
`build_summary` is what the server may see: scrubbed, and without bodies or values.
"""

from __future__ import annotations

import base64
import platform
import sys
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from fluxrun._internal import format_site
from fluxrun._version import __version__
from fluxrun.model.recording import KINDS, Event, Recording
from fluxrun.model.request import request_identity
from fluxrun.model.schema import AnyEvent, SummaryEvent
from fluxrun.model.values import not_rebuildable
from fluxrun.scrub import Scrubber

__all__ = ["PAYLOAD_FORMAT", "SDK", "body_bytes", "build_payload", "build_summary", "culprit", "json_body"]

PAYLOAD_FORMAT = 1
SDK = {"name": "fluxrun.python", "version": __version__}


def json_body(value: Any) -> Any:
    """Replace recorded bodies `{"bytes": b"..."}` by `{"text": ...}` or `{"base64": ...}`, recursively."""
    if isinstance(value, dict):
        raw = value.get("bytes")
        if isinstance(raw, (bytes, bytearray)):
            out = {k: v for k, v in value.items() if k != "bytes"}
            try:
                out["text"] = bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                out["base64"] = base64.b64encode(raw).decode()
            return out
        return {k: json_body(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_body(v) for v in value]
    if isinstance(value, tuple):
        return [json_body(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)  # objects kept raw on the hot path, such as httpx.URL


def body_bytes(body: Mapping[str, Any] | None) -> bytes:
    """The bytes of a recorded body (`{"text": ...}` or `{"base64": ...}`), empty when none were kept."""
    if not body:
        return b""
    if "text" in body:
        return str(body["text"]).encode()
    if "base64" in body:
        return base64.b64decode(body["base64"])
    return b""


def _event(event: Event) -> AnyEvent:
    data = json_body(event.data)
    call = event.call
    if call is None and event.kind == "http":
        call = f"{data['request']['method']} {data['request']['url']}"
    out: AnyEvent = {
        "seq": event.seq,
        "kind": event.kind,
        "call": call,
        "task": event.task,
        "site": format_site(event.site),
        "start_ns": event.start_ns,
        "dur_ns": event.dur_ns,
        "data": data,
    }
    if event.error is not None:
        out["error"] = event.error
    return out


def iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def build_payload(
    recording: Recording,
    *,
    bundle_id: str,
    release: str | None,
    environment: str | None,
    app_modules: tuple[str, ...] = (),
) -> dict[str, Any]:
    request = json_body(recording.request)
    if "headers" in request and "request_id" not in request:
        request["request_id"], request["traceparent"] = request_identity(request["headers"], bundle_id)
    return {
        "format": PAYLOAD_FORMAT,
        "bundle_id": bundle_id,
        "execution": recording.execution,
        "entry": recording.entry,
        "started_at": iso(recording.started_wall),
        "request": request,
        "events": [_event(e) for e in sorted(recording.events, key=lambda e: e.seq)],
        "outcome": json_body(recording.outcome),
        "sdk": SDK,
        "release": release,
        "environment": environment,
        "runtime": {"python": platform.python_version(), "implementation": sys.implementation.name},
        **({"in_app_include": list(app_modules)} if app_modules else {}),
        **({"task_ends": dict(recording.ends)} if recording.ends else {}),
        **({"task_states": _task_states(recording.states)} if recording.states else {}),
    }


def _task_states(states: dict[int, tuple[list[str], list[str]]]) -> dict[str, dict[str, list[str]]]:
    return {str(n): {"busy": list(busy), "parked": list(waiting)} for n, (busy, waiting) in list(states.items())}


def _label(event: AnyEvent, scrubber: Scrubber) -> str:
    kind, data = event["kind"], event["data"]
    if kind == "http":
        return f"{data['request']['method']} {scrubber.url(data['request']['url'])}"
    if kind == "log":
        return f"{data.get('level', '')} {data.get('logger', '')}"
    return str(event["call"])  # env key names, time/random function names, boundary names: no values


def _index_entry(event: AnyEvent, scrubber: Scrubber) -> SummaryEvent:
    entry: SummaryEvent = {
        "seq": event["seq"],
        "kind": event["kind"],
        "label": _label(event, scrubber),
        "task": event["task"],
        "start_ms": round(event["start_ns"] / 1e6, 3),
        "dur_ms": round(event["dur_ns"] / 1e6, 3),
    }
    response = event["data"].get("response") if event["kind"] == "http" else None
    if response:
        entry["status"] = response["status"]
        body = response.get("body") or {}
        if body.get("truncated"):
            entry["truncated"] = True
    if event["kind"] == "http" and (event["data"]["request"].get("body") or {}).get("truncated"):
        entry["truncated"] = True
    if "error" in event:
        entry["error_type"] = event["error"].get("type")
    if event["kind"] == "env" and event["data"].get("reader"):
        entry["reader"] = event["data"]["reader"]  # a package's or the standard library's read, not the app's
    return entry


def culprit(error: dict[str, Any]) -> dict[str, Any] | None:
    """Where the app raised: its innermost own frame (the last frame when none is the app's), as file, line,
    function and module. The same fields an unlock shows unmasked; never the source line or a value."""
    frames = [f for f in error.get("frames") or [] if isinstance(f, dict)]
    chosen = next((f for f in reversed(frames) if f.get("in_app")), frames[-1] if frames else None)
    if chosen is None:
        return None
    return {k: chosen.get(k) for k in ("file", "line", "function", "module")}


def not_recorded(events: list[AnyEvent]) -> list[str]:
    """What a recording lacks, in words (`1 connection to 127.0.0.1:5432 was not recorded`): the IO noted as
    "unrecorded" at capture (fluxrun.interceptors.unrecorded), which a replay could not serve."""
    return [f"1 {e['call']} was not recorded" for e in events if e["kind"] == "unrecorded"]


def _kind_order(item: tuple[str, int]) -> tuple[int, str]:
    """Known kinds in `KINDS` order, then an interceptor plugin's own kinds by name."""
    return (KINDS.index(item[0]), "") if item[0] in KINDS else (len(KINDS), item[0])


def build_summary(payload: dict[str, Any], *, scrubber: Scrubber, duration_ns: int) -> dict[str, Any]:
    """The plaintext, scrubbed half of a bundle: enough to triage and group, nothing to leak."""
    request = payload["request"]
    outcome = payload["outcome"]
    error = outcome.get("error")
    events: list[AnyEvent] = payload["events"]
    summary: dict[str, Any] = {
        "bundle_id": payload["bundle_id"],
        "execution": payload["execution"],
        "entry": payload["entry"],
        "started_at": payload["started_at"],
        "duration_ms": round(duration_ns / 1e6, 3),
        # the route falls back to the raw path (no template matched, a WSGI app): scrubbed like the path
        "route": scrubber.url(request.get("route") or request.get("path") or payload["entry"]),
        "method": request.get("method"),
        "path": scrubber.url(request["path"]) if request.get("path") else None,
        "status": outcome.get("status"),
        "outcome": outcome.get("kind"),
        "error": (
            {"type": error["type"], "message": scrubber.text(error["message"]), "culprit": culprit(error)}
            if error
            else None
        ),
        "fingerprint": error["fingerprint"] if error else None,
        "request_id": scrubber.text(request["request_id"]) if request.get("request_id") else request.get("request_id"),
        "trace_id": (request.get("traceparent") or {}).get("trace_id"),
        "events": [_index_entry(e, scrubber) for e in events],
        "counts": {k: v for k, v in sorted(Counter(e["kind"] for e in events).items(), key=_kind_order)},
        "sdk": payload["sdk"],
        "release": payload["release"],
        "environment": payload["environment"],
    }
    # IO the replay could not serve, values it could not rebuild: say so before anyone tries
    missing = not_recorded(events) + not_rebuildable(payload)
    summary["replay_ready"] = not missing
    if missing:
        summary["not_replay_ready"] = [scrubber.text(reason) for reason in missing]
    return summary
