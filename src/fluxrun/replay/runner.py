"""Run a recorded execution again: import its entry point, call it with the recorded request or
arguments while every intercepted call is served from the recording, and compare the outcomes.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

from fluxrun._context import Scope, current, scope_var
from fluxrun._internal import InApp, app_modules, format_site, set_app_modules, wall_time
from fluxrun._replay_mode import replaying
from fluxrun.bundle import OpenedBundle, ReplayKey, load_replay_key, load_replay_keys, open_bundle
from fluxrun.errors import FluxRunError, LiveIOBlocked, ReplayDivergence
from fluxrun.interceptors import install
from fluxrun.middleware.frameworks import take_handled
from fluxrun.model.export import body_bytes
from fluxrun.model.outcome import describe_exception
from fluxrun.model.recording import Recording
from fluxrun.model.values import decode
from fluxrun.replay import isolation
from fluxrun.replay.answers import Answers
from fluxrun.replay.entry import choose_entry
from fluxrun.replay.result import Outcome, ReplayResult, classify, outcome_of
from fluxrun.replay.session import ReplaySession
from fluxrun.replay.sockets import blocking_sockets

__all__ = ["ReplayExpectationError", "load_payload", "run"]

Expect = Literal["fixed", "reproduce"]


class ReplayExpectationError(FluxRunError, AssertionError):
    """The replay ran cleanly but did not end the way the test expects (fixed, or reproduced)."""

    def __init__(self, message: str, result: ReplayResult) -> None:
        super().__init__(message)
        self.result = result


def _replay_key(key: str | os.PathLike[str] | ReplayKey | None) -> ReplayKey:
    if isinstance(key, ReplayKey):
        return key
    if key is None:
        env = os.environ.get("FLUXRUN_REPLAY_KEY")
        if not env:
            raise FluxRunError(
                "no replay key: set FLUXRUN_REPLAY_KEY=path/to/replay.key (or pass key=...); "
                "it is the replay.key written by `fluxrun keys generate`"
            )
        return load_replay_keys([Path(p) for p in env.split(os.pathsep) if p])
    return load_replay_key(Path(key))


def load_payload(bundle: Any, key: Any = None) -> dict[str, Any]:
    """A bundle as a path, bytes, an opened bundle, or an already-decrypted payload dict."""
    if isinstance(bundle, dict):
        return bundle
    if isinstance(bundle, OpenedBundle):
        return bundle.payload
    if isinstance(bundle, (str, os.PathLike)):
        path = Path(bundle)
        if not path.exists():
            raise FluxRunError(f"bundle {path} does not exist (pull it with `fluxrun pull`, or check the path)")
        bundle = path.read_bytes()
    return open_bundle(bytes(bundle), _replay_key(key)).payload


def _run_async(factory: Callable[[], Awaitable[Any]]) -> Any:
    """Run a coroutine to completion on a fresh loop, on another thread if this one already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())  # type: ignore[arg-type]
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(factory())  # type: ignore[arg-type]
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="fluxrun-replay")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


# One in-app decision cache for every replay in the process (deciding costs a path lookup per module).
REPLAY_IN_APP = InApp()


class _Run:
    """One replay: the session, the replay-side log, and the outcome."""

    def __init__(self, payload: dict[str, Any], in_app: InApp, answers: Answers | None = None) -> None:
        self.payload = payload
        self.session = ReplaySession(payload, answers)
        self.recording = Recording(payload["execution"], payload.get("entry"), wall_time())
        self.in_app = in_app
        self.error: BaseException | None = None
        self.status: int | None = None
        self.response: dict[str, Any] | None = None
        self.value: Any = None
        self.warnings: list[str] = []

    def enter(self) -> Any:
        return scope_var.set(Scope.root(self.recording, self.session))

    def outcome(self) -> Outcome:
        handled = take_handled(self.recording.outcome)  # an exception the framework answered 500 for
        if self.error is None and handled is not None and (self.status or 500) >= 500:
            self.error = handled
        if self.error is not None:
            described = describe_exception(self.error, self.in_app, max_bytes=1 << 16)
            return outcome_of({"status": self.status, "error": described})
        return outcome_of({"status": self.status})

    # -- ASGI --------------------------------------------------------------------------------------
    async def asgi(self, app: Any) -> None:
        request = self.payload["request"]
        lifespan = Lifespan(app)
        await lifespan.start()  # before the execution: its IO is no call of the recorded request
        if lifespan.problem is not None:
            self.warnings.append(
                f"the app's lifespan {lifespan.problem}, so the request ran without it (what it sets up is missing: "
                "make that startup work offline, or set it up in a test fixture)"
            )
        token = self.enter()
        body = body_bytes(request.get("body"))
        done = asyncio.Event()
        sent_body = False
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.status = message["status"]
                self.response = {"status": message["status"], "headers": _text_headers(message.get("headers", []))}
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    done.set()

        try:
            await app({**_asgi_scope(request), "state": dict(lifespan.state)}, receive, send)
        except BaseException as exc:
            self.error = exc
            if self.status is None:
                self.status = 500
        finally:
            done.set()
            scope_var.reset(token)
            if self.response is not None:
                self.response["body"] = b"".join(chunks)
            await lifespan.stop()

    # -- WSGI --------------------------------------------------------------------------------------
    def wsgi(self, app: Any) -> None:
        request = self.payload["request"]
        token = self.enter()
        chunks: list[bytes] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            self.status = int(status.split(" ", 1)[0])
            self.response = {"status": self.status, "headers": [list(h) for h in headers]}
            return chunks.append

        try:
            iterable = app(_wsgi_environ(request), start_response)
            try:
                chunks.extend(iterable)
            finally:
                close = getattr(iterable, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:
            self.error = exc
            if self.status is None:
                self.status = 500
        finally:
            scope_var.reset(token)
            if self.response is not None:
                self.response["body"] = b"".join(chunks)

    # -- functions ---------------------------------------------------------------------------------
    def function(self, func: Any) -> None:
        request = self.payload["request"]
        args, kwargs = decode(request.get("args", [])), decode(request.get("kwargs", {}))
        if asyncio.iscoroutinefunction(func):

            async def call() -> None:
                token = self.enter()
                try:
                    self.value = await func(*args, **kwargs)
                except BaseException as exc:
                    self.error = exc
                finally:
                    scope_var.reset(token)

            _run_async(call)
            return
        token = self.enter()
        try:
            self.value = func(*args, **kwargs)
        except BaseException as exc:
            self.error = exc
        finally:
            scope_var.reset(token)


def _text_headers(headers: Any) -> list[list[str]]:
    return [[k.decode("latin-1"), v.decode("latin-1")] for k, v in headers]


class Lifespan:
    """The app's lifespan around a replayed ASGI request, as a server runs it: startup before (the clients, pools
    and state a FastAPI or Starlette app makes there; its state dict is given to the request), shutdown after.
    It runs outside the replayed execution: nothing of it was recorded with the request, so IO it attempts is
    blocked like any live IO, and does not fail the replay. A startup that fails, or does not finish within
    `LIFESPAN_LIMIT` seconds, leaves the request to run without it (`problem` says why); an app without lifespan
    support (it raises on the lifespan scope, as the ASGI spec allows) runs without it silently."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self.problem: str | None = None
        self._to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._started = False

    async def start(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        self._task = asyncio.get_running_loop().create_task(self._run(scope))
        await self._to_app.put({"type": "lifespan.startup"})
        try:
            message = await asyncio.wait_for(self._from_app.get(), LIFESPAN_LIMIT)
        except TimeoutError:
            self.problem = f"startup did not finish within {LIFESPAN_LIMIT:g} s"
            self._task.cancel()
            return
        kind = message.get("type")
        if kind == "lifespan.startup.complete":
            self._started = True
        elif kind == "lifespan.startup.failed":
            self.problem = f"startup failed at replay: {_last_line(str(message.get('message') or ''))}"

    async def _run(self, scope: dict[str, Any]) -> None:
        try:
            await self.app(scope, self._to_app.get, self._from_app.put)
        except BaseException:  # no lifespan support, or a startup that raised after saying it failed
            pass
        finally:
            await self._from_app.put({"type": "fluxrun.lifespan.ended"})

    async def stop(self) -> None:
        if self._task is None or self._task.done():
            return
        if self._started:
            await self._to_app.put({"type": "lifespan.shutdown"})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._from_app.get(), LIFESPAN_LIMIT)
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task


LIFESPAN_LIMIT = 5.0


def _last_line(text: str) -> str:
    """A traceback's last line (the exception), which is what says why."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no reason given"


def _asgi_scope(request: dict[str, Any]) -> dict[str, Any]:
    path = request.get("path") or "/"
    query = request.get("query_string") or ""
    server = request.get("server")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": request.get("http_version") or "1.1",
        "method": request.get("method") or "GET",
        "scheme": request.get("scheme") or "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": request.get("root_path") or "",
        "query_string": query.encode("latin-1") if isinstance(query, str) else bytes(query),
        "headers": [(str(k).encode("latin-1"), str(v).encode("latin-1")) for k, v in request.get("headers", [])],
        "server": tuple(server) if server else ("replay", 80),
        "client": ("127.0.0.1", 0),
        "state": {},
    }


def _wsgi_environ(request: dict[str, Any]) -> dict[str, Any]:
    body = body_bytes(request.get("body"))
    server = request.get("server") or ["replay", "80"]
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.get("method") or "GET",
        "SCRIPT_NAME": request.get("root_path") or "",
        "PATH_INFO": request.get("path") or "/",
        "QUERY_STRING": request.get("query_string") or "",
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{request.get('http_version') or '1.1'}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": request.get("scheme") or "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in request.get("headers", []):
        key = name.upper().replace("-", "_")
        environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"] = value
    return environ


def run(
    bundle: Any,
    key: str | os.PathLike[str] | ReplayKey | None = None,
    *,
    app: Any = None,
    expect: Expect | None = None,
    strict: bool = True,
    isolate: bool | None = None,
    answers: Answers | None = None,
) -> ReplayResult:
    """Replay a captured execution against the code as it is now.

    `bundle` is a path, bytes, an opened bundle or a payload; `key` a replay.key path (default
    `FLUXRUN_REPLAY_KEY`). `app` overrides the entry point recorded in the bundle (an object or
    `"module:attr"`). Raises `ReplayDivergence` when the code made a call the recording cannot answer,
    `LiveIOBlocked` when it tried to reach the network, and, with `expect`, `ReplayExpectationError`
    when the outcome is not the expected one. `strict=False` turns the reproduce-side failure for
    recorded calls that were never made into a warning.

    `isolate` (default: on, unless `FLUXRUN_REPLAY_ISOLATE=0`) replays in a child process without
    network (see `fluxrun.replay.isolation`); `result.isolation` says which protection was in force.
    `answers` (`fluxrun.replay.Answers`) answers calls the recording lacks, as a fix may make; each use
    is listed in `result.supplied`.
    """
    payload = load_payload(bundle, key)
    if isolation.wanted(isolate):
        held = install.current_installation()
        if held is not None:  # bring a held installation up to date here, once, not again in every child
            held.rescan_if_needed()
        result = isolation.run_in_child(lambda: replay_here(payload, app, answers))
    else:
        result = replay_here(payload, app, answers)
    if expect is not None:
        check(result, expect, strict=strict)
    return result


def replay_here(payload: dict[str, Any], app: Any = None, answers: Answers | None = None) -> ReplayResult:
    """Replay an opened payload in this process (what the isolated child runs). The app's own
    `fluxrun.init()`, run when its module is imported here, stays quiet: replay needs no capture key."""
    with replaying():
        return _replay_here(payload, app, answers)


def _replay_here(payload: dict[str, Any], app: Any, answers: Answers | None) -> ReplayResult:
    in_app = REPLAY_IN_APP
    state = _Run(payload, in_app, answers)
    blocked: list[LiveIOBlocked] = []
    captured_with = app_modules()
    set_app_modules(tuple(payload.get("in_app_include") or ()))  # what counted as the app's IO at capture
    installation = install.acquire(in_app)
    try:
        # the app is imported with the interceptors in place, so that what it opens at import (a database pool)
        # is opened as a replay's: it does not connect
        target, entry_name = choose_entry(app, payload)  # the operator's app, or a recorded entry FluxRun marked
        installation.rescan_if_needed()
        # live IO the replayed execution attempted fails the replay even if the app swallowed the error; the
        # app's lifespan runs outside the execution (`current()` is None there), and its attempts do not
        with blocking_sockets(lambda error: blocked.append(error) if current() is not None else None):
            execution = payload["execution"]
            if execution == "asgi":
                _run_async(lambda: state.asgi(target))
            elif execution == "wsgi":
                state.wsgi(target)
            else:
                state.function(target)
    finally:
        state.session.close()  # threads still waiting for a call that never completed give up
        install.release()
        set_app_modules(captured_with)
    session = state.session
    actual = [(e.kind, e.call or "", e.task, format_site(e.site).rsplit(":", 1)[0]) for e in state.recording.events]
    if session.divergences:
        divergence = session.divergences[0]
        refused = _refusal_before(divergence)
        if refused is not None:  # the divergence came of the refusal (a connection rolled back as it went by)
            raise refused
        divergence.actual = actual
        raise divergence
    if blocked:
        raise blocked[0]
    if isinstance(state.error, (ReplayDivergence, LiveIOBlocked)):  # raised outside the session's view
        raise state.error
    original, new = outcome_of(payload["outcome"]), state.outcome()
    result = ReplayResult(
        bundle_id=payload["bundle_id"],
        entry=entry_name,
        outcome=classify(original, new),
        original=original,
        new=new,
        served=dict(session.served),
        recorded_calls=session.total,
        unconsumed=session.unconsumed(),
        events=actual,
        response=state.response,
        value=state.value,
        isolation=isolation.IN_PROCESS,
        supplied=answers.report() if answers is not None else [],
        warnings=[
            *state.warnings,
            *([f"a supplied answer was never used: {a}" for a in answers.unused()] if answers is not None else []),
        ],
    )
    differs = _message_differs(result)
    if differs is not None:
        result.warnings.append(differs)
    return result


def _message_differs(result: ReplayResult) -> str | None:
    """A reproduced error whose message is not the recorded one: the same type from the same place, but with
    something the recording did not serve (an object's address, a value read outside any intercepted call)."""
    recorded, now = result.original.message, result.new.message
    if result.outcome != "reproduced" or recorded is None or now is None or recorded == now:
        return None
    return (
        f"the error's message differs from the recorded one: recorded {_shown(recorded)}, now {_shown(now)} "
        "(the same type from the same place; something in the message was not served from the recording)"
    )


def _shown(message: str, limit: int = 200) -> str:
    return repr(message if len(message) <= limit else message[: limit - 1] + "…")


def _refusal_before(divergence: ReplayDivergence) -> LiveIOBlocked | None:
    """The refusal a divergence was raised while handling, if any: it happened first, and it is the cause. A
    `with connect(...)` block that a refusal leaves rolls back, a call the recording does not have."""
    error: BaseException | None = divergence.__context__
    for _ in range(_CONTEXT_DEPTH):
        if error is None:
            return None
        if isinstance(error, LiveIOBlocked):
            return error
        error = error.__context__
    return None


_CONTEXT_DEPTH = 16


def check(result: ReplayResult, expect: Expect, *, strict: bool = True) -> None:
    """Raise `ReplayExpectationError` unless the result is what a test expects."""
    if expect == "fixed":
        if result.outcome != "fixed":
            raise ReplayExpectationError(
                f"expected the failure to be fixed, but it is {result.outcome}\n{result.summary()}", result
            )
        return
    if expect != "reproduce":
        raise FluxRunError(f"expect={expect!r}: use 'fixed' or 'reproduce'")
    if result.outcome != "reproduced":
        raise ReplayExpectationError(
            f"expected the failure to reproduce, but it is {result.outcome}\n{result.summary()}", result
        )
    if result.unconsumed:
        message = (
            f"the failure reproduced, but {len(result.unconsumed)} recorded calls were never made: "
            "the code no longer does what it did when it failed"
        )
        if strict:
            raise ReplayExpectationError(f"{message}\n{result.summary()}", result)
        result.warnings.append(message)
