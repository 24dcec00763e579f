"""`fluxrun bundle inspect`: a bundle's summary, and with the replay key its decrypted timeline.

Values the scrub rules consider sensitive are masked on screen unless `--show-secrets` is given:
a terminal is often shared or recorded, and the key holder can still ask for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fluxrun.bundle import OpenedBundle, SealedBundle, load_replay_key, open_bundle, read_bundle
from fluxrun.model.schema import AnyEvent, SummaryEvent
from fluxrun.model.values import describe
from fluxrun.scrub import Scrubber, default_scrubber

__all__ = ["inspect_bundle"]

_PREVIEW = 80


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    if n < 1024:
        return f"{n} B"
    if n < 1 << 20:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1 << 20):.1f} MiB"


def _short(text: str, limit: int = _PREVIEW) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _value(encoded: Any) -> str:
    """The value as recorded, rendered from its encoding: inspecting a bundle never imports or runs app code."""
    return describe(encoded)


def _body(body: dict[str, Any] | None, content_type: str | None, scrub: Scrubber | None) -> str:
    if not body:
        return ""
    if body.get("streamed"):
        return f"(streamed, {_size(body.get('size'))}, not recorded)"
    if "text" in body:
        text = body["text"]
        if scrub is not None:
            shown = scrub.body(text, content_type)
            text = shown.decode("utf-8", "replace") if isinstance(shown, bytes) else shown
    else:
        text = f"<{_size(body.get('size'))} binary>"
    mark = " (truncated)" if body.get("truncated") else ""
    return _short(text) + mark


def _header(headers: list[list[str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _detail(event: AnyEvent, scrub: Scrubber | None) -> str:
    kind, data, error = event["kind"], event["data"], event.get("error")
    if kind == "http":
        if error:
            return f"{error['type'].rsplit(':', 1)[-1]}: {error['message']}"
        response = data.get("response") or {}
        ctype = _header(response.get("headers", []), "content-type")
        return f"→ {response.get('status')} {_body(response.get('body'), ctype, scrub)}"
    if kind == "env":
        if error or not data.get("present", True):
            return "(not set)"
        value = str(data.get("value"))
        if scrub is not None:
            value = "[Filtered]" if scrub.is_sensitive_key(data["key"]) else scrub.text(value)
        return _short(value)
    if kind == "host":
        args = _value(data.get("args"))
        shown = f"({args[1:-1]})"
        if error:
            return f"{shown} raised {error['type'].rsplit(':', 1)[-1]}: {error['message']}"
        result = _value(data.get("result"))
        return _short(f"{shown} → {result}" if scrub is None else scrub.text(f"{shown} → {result}"))
    if kind == "log":
        message = data.get("message", "")
        return _short(message if scrub is None else scrub.text(message))
    if kind == "timer":
        return f"{data.get('seconds')} s"
    if "permutation" in data:
        return f"permutation {data['permutation']}"
    if "value" in data:
        return _short(_value(data["value"]))
    return ""


def _print_summary(console: Console, sealed: SealedBundle, size: int, verified: bool) -> None:
    s = sealed.summary
    header = sealed.header
    console.print(
        f"[bold]FluxRun bundle {sealed.bundle_id}[/]  format v{sealed.version}, {_size(size)}, "
        f"sealed {header.get('created_at', '?')} by {header.get('sdk', '?')}"
    )
    state = "[green]signature verified[/]" if verified else "[yellow]signature not verified[/] (pass --key replay.key)"
    console.print(f"signed by {sealed.signing_key_id}, sealed for {sealed.recipient_key_id}: {state}")
    error = s.get("error")
    outcome = f"{error['type']}: {error['message']}" if error else s.get("outcome")
    console.print(
        f"[bold]{escape(str(s.get('method') or s.get('execution')))} {escape(str(s.get('route')))}[/] → "
        f"{s.get('status') or '-'}  {escape(str(outcome))}"
    )
    facts = [f"duration {s.get('duration_ms')} ms", f"fingerprint {s.get('fingerprint') or '-'}"]
    for name in ("release", "environment", "request_id", "trace_id"):
        if s.get(name):
            facts.append(f"{name.replace('_', ' ')} {s[name]}")
    console.print(escape("  ".join(facts)))
    counts = ", ".join(f"{n} {k}" for k, n in (s.get("counts") or {}).items()) or "none"
    console.print(f"IO events: {counts}")


def _index_table(summary: dict[str, Any]) -> Table:
    table = Table(title="IO event index (from the plaintext summary)", title_justify="left")
    for column in ("#", "at ms", "dur ms", "task", "kind", "label", "status"):
        table.add_column(column, justify="right" if column in ("#", "at ms", "dur ms") else "left")
    events: list[SummaryEvent] = summary.get("events", [])
    for e in events:
        status = str(e.get("status") or e.get("error_type") or "")
        timing = (f"{e['start_ms']:.3f}", f"{e['dur_ms']:.3f}")
        table.add_row(str(e["seq"]), *timing, e["task"], e["kind"], escape(e["label"]), escape(status))
    return table


def _timeline_table(payload: dict[str, Any], scrub: Scrubber | None) -> Table:
    table = Table(title="Event timeline (decrypted)", title_justify="left")
    for column in ("#", "at ms", "dur ms", "task", "kind", "call", "detail", "site"):
        table.add_column(column, justify="right" if column in ("#", "at ms", "dur ms") else "left")
    events: list[AnyEvent] = payload["events"]
    for e in events:
        call = e["call"] or ""  # every exported event names its call (an http fetch's is made at export)
        if e["kind"] == "http" and scrub is not None:
            call = f"{call.split(' ', 1)[0]} {scrub.url(call.split(' ', 1)[1])}"
        module, _function, line = [*e["site"].rsplit(":", 2), "", ""][:3]
        table.add_row(
            str(e["seq"]), f"{e['start_ns'] / 1e6:.3f}", f"{e['dur_ns'] / 1e6:.3f}", e["task"], e["kind"],
            escape(_short(call, 60)), escape(_detail(e, scrub)), escape(f"{module}:{line}"),
        )  # fmt: skip
    return table


def _print_request_and_outcome(console: Console, payload: dict[str, Any], scrub: Scrubber | None) -> None:
    request = payload["request"]
    if request.get("method"):
        query = request.get("query_string") or ""
        target = f"{request['method']} {request.get('path')}{'?' + query if query else ''}"
        console.print(f"[bold]request[/] {escape(target if scrub is None else scrub.url(target))}")
        headers = [(k, v) for k, v in request.get("headers", [])]
        for key, value in scrub.headers(headers) if scrub is not None else headers:
            console.print(f"  {escape(key)}: {escape(_short(value, 100))}")
        ctype = _header([list(h) for h in headers], "content-type")
        if request.get("body", {}).get("size"):
            console.print(f"  body: {escape(_body(request['body'], ctype, scrub))}")
    elif "args" in request:
        call = f"args={_value(request['args'])} kwargs={_value(request['kwargs'])}"
        console.print(
            f"[bold]called[/] {escape(str(payload.get('entry')))} {escape(scrub.text(call) if scrub else call)}"
        )
    error = payload["outcome"].get("error")
    if error:
        message = scrub.text(error["message"]) if scrub else error["message"]
        console.print(f"[bold red]{escape(error['type'])}[/]: {escape(message)}")
        hidden = 0
        for frame in error["frames"]:
            if not frame["in_app"]:
                hidden += 1
                continue
            if hidden:
                console.print(f"    [dim]… {hidden} library frame{'s' if hidden > 1 else ''}[/]")
                hidden = 0
            console.print(escape(f"  → {frame['file']}:{frame['line']} in {frame['function']}"))
            if frame.get("code"):
                console.print(escape(f"        {frame['code']}"))
        if hidden:
            console.print(f"    [dim]… {hidden} library frame{'s' if hidden > 1 else ''}[/]")


def inspect_bundle(console: Console, file: Path, key: Path | None, *, show_secrets: bool, as_json: bool) -> None:
    data = file.read_bytes()
    opened: OpenedBundle | None = None
    if key is not None:
        opened = open_bundle(data, load_replay_key(key))
        sealed = opened.sealed
    else:
        sealed = read_bundle(data)
    if as_json:
        doc: dict[str, Any] = {"header": sealed.header, "summary": sealed.summary}
        if opened is not None:
            doc["payload"] = opened.payload
        console.print_json(orjson.dumps(doc).decode())
        return
    _print_summary(console, sealed, len(data), verified=opened is not None)
    if opened is None:
        console.print(_index_table(sealed.summary))
        return
    scrub = None if show_secrets else default_scrubber()
    _print_request_and_outcome(console, opened.payload, scrub)
    console.print(_timeline_table(opened.payload, scrub))
    if scrub is not None:
        console.print("[dim]values the scrub rules consider sensitive are masked; --show-secrets shows them[/]")
