"""The agent as an ASGI application: unlock and replay sealed bundles for holders of a server grant.

The agent runs where the customer runs their code and is the only process that holds the replay key.
The dashboard's browser fetches a bundle (still encrypted) and a grant from the FluxRun server and posts
both here; the agent checks the grant against the server's pinned grant key, opens the bundle, and
answers with the payload (masked unless the grant is protected) or the outcome of replaying it against
the code this process runs. Every request, allowed or refused, is written to the audit log.

A grant names the bundle's SHA-256, and the posted bytes must have it before anything else is done with
them. Used grants are remembered in their own durable store (`fluxrun.agent.nonces`), which only verified
grants reach; refusals are rate limited per client address (`fluxrun.agent.limits`) and answered 429 over
the limit, with one summarising audit line per interval instead of one line each.

Endpoints (relative to where the app is served or mounted):

- ``GET  /v1/health``  version, project, grant key id and the key ids it can open; no secrets
- ``POST /v1/unlock``  ``{"grant": ..., "bundle": base64}`` -> the payload
- ``POST /v1/replay``  ``{"grant": ..., "bundle": base64}`` -> {outcome, original, new, served, unconsumed}
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import logging
import math
import threading
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fluxrun._version import __version__
from fluxrun.agent.audit import AuditLog
from fluxrun.agent.config import AgentConfig
from fluxrun.agent.limits import RefusalLimiter
from fluxrun.agent.mask import mask_payload, mask_text
from fluxrun.agent.nonces import NonceStore, NonceStoreError, default_nonce_store
from fluxrun.bundle import OpenedBundle, SealedBundle, open_bundle, read_bundle
from fluxrun.errors import BundleError, FluxRunError, LiveIOBlocked, ReplayDivergence
from fluxrun.grant import ACTIONS, Grant, GrantError, bundle_digest, iso, unverified_claims, verify_grant

__all__ = ["Agent", "build_app"]

log = logging.getLogger("fluxrun.agent")


class Refused(Exception):
    """A request the agent answers with an error status; also what the audit log records as the reason."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class Agent:
    """The agent's state: its settings, the audit log, the used-nonce store, and one replay at a time.

    Replays run one at a time, each in its own child process without network (`fluxrun.replay.isolation`),
    so the app that mounts the agent keeps its own connections.
    """

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.audit = AuditLog(config.audit_log)
        # An older agent kept used nonces only in its audit log: a store created now starts from that log.
        store = config.nonce_store or default_nonce_store(config.audit_log)
        self.nonces = NonceStore(store, seed=self.audit.used_nonces)
        self.refusals = RefusalLimiter(burst=config.refusal_burst, rate=config.refusal_rate)
        self._replay_lock = threading.Lock()

    # --- request handling ----------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        cfg = self.config
        return JSONResponse(
            {
                "agent": "fluxrun",
                "version": __version__,
                "project": cfg.project,
                "grant_key_id": cfg.grant_key_id,
                "grant_key_trust": cfg.grant_key_trust,
                "grant_key_server": cfg.grant_key_server,
                "recipient_key_ids": sorted(cfg.replay_key.recipients),
                "signing_key_ids": sorted(cfg.replay_key.signers),
                "actions": list(ACTIONS),
                "origin": cfg.origin,
            }
        )

    async def unlock(self, request: Request) -> Response:
        return await self._handle(request, "unlock")

    async def replay(self, request: Request) -> Response:
        return await self._handle(request, "replay")

    async def _handle(self, request: Request, action: str) -> Response:
        now = time.time()
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "action": action,
            "client": f"{request.client.host}:{request.client.port}" if request.client else None,
            "agent_project": self.config.project,
        }
        try:
            body = await self._read_json(request)
            token = body.get("grant")
            _note_claims(entry, unverified_claims(token), verified=False)
            try:
                grant = verify_grant(token, key_id=self.config.grant_key_id, public=self.config.grant_public, now=now)
            except GrantError as exc:
                raise Refused(exc.status, exc.reason, str(exc)) from None
            _note_claims(entry, grant.claims, verified=True)
            data, sealed = await run_in_threadpool(self._check, grant, action, body, entry)
            entry["bundle_id"] = sealed.bundle_id
            try:  # committed before the grant's action runs
                claimed = await run_in_threadpool(self.nonces.claim, grant.nonce, grant.expires_at, now)
            except NonceStoreError as exc:
                log.error("%s", exc)
                raise Refused(
                    503, "nonce_store_failed", "the agent cannot record the grant as used; see its log"
                ) from None
            if claimed is None:
                raise Refused(503, "busy", "too many unexpired grants in flight; retry in a minute")
            if not claimed:
                raise Refused(409, "reused", "grant already used: grants are single use; ask the server for a new one")
            entry["grant_consumed"] = True
            opened = await run_in_threadpool(self._open, data)
            if action == "unlock":
                result = self._unlock_result(grant, opened)
                entry["result"] = "allowed"
            else:
                result = await run_in_threadpool(self._replay, grant, opened)
                entry["result"] = "allowed"
                entry["replay"] = result.get("outcome") or (result.get("error") or {}).get("type")
            entry["status"] = 200
            try:
                await run_in_threadpool(self.audit.write, entry)  # fsynced: off the event loop
            except OSError as exc:
                log.error("cannot write the audit log %s: %s", self.audit.path, exc)
                return _refusal(503, "audit_failed", f"the agent cannot write its audit log ({exc.strerror or exc})")
            return JSONResponse(result)
        except Refused as exc:
            if limited := await self._over_limit(request, entry, now):
                return limited
            entry.update(result="refused", status=exc.status, reason=exc.reason, message=str(exc))
            await self._write_refusal(entry)
            return _refusal(exc.status, exc.reason, str(exc))
        except Exception as exc:
            log.exception("agent %s failed", action)
            if limited := await self._over_limit(request, entry, now):
                return limited
            message = f"the agent failed ({type(exc).__name__}); see its log"
            entry.update(result="error", status=500, reason="internal", message=message)
            await self._write_refusal(entry)
            return _refusal(500, "internal", message)

    async def _over_limit(self, request: Request, entry: dict[str, Any], now: float) -> Response | None:
        """Charge a refusal to its client; over the limit, a 429 (and at most one summary line an interval)."""
        client = request.client.host if request.client else "unknown"
        wait = self.refusals.retry_after(client, now)
        if wait <= 0:
            return None
        summary = self.refusals.limited(client, now, entry["time"])
        if summary is not None:
            await self._write_refusal(summary)
        seconds = max(1, math.ceil(wait))
        message = f"too many refused requests from {client[:64]}; retry in {seconds} s with a valid grant"
        response = _refusal(429, "rate_limited", message)
        response.headers["Retry-After"] = str(seconds)
        return response

    async def _write_refusal(self, entry: dict[str, Any]) -> None:
        try:
            await run_in_threadpool(self.audit.write, entry)
        except OSError as exc:  # the refusal stands either way; say loudly that it went unrecorded
            log.error("cannot write the audit log %s: %s", self.audit.path, exc)

    async def _read_json(self, request: Request) -> dict[str, Any]:
        # base64 grows the bundle by 4/3; the grant and JSON framing need a few KiB more.
        limit = self.config.max_bundle_bytes * 4 // 3 + 64 * 1024
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise Refused(413, "too_large", f"request is {length} bytes; this agent accepts at most {limit}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Refused(413, "too_large", f"request is over {limit} bytes, the most this agent accepts")
            chunks.append(chunk)
        try:
            body = orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            raise Refused(400, "malformed", 'send JSON: {"grant": "<grant from the server>", "bundle": "<base64>"}')
        return body

    def _check(
        self, grant: Grant, action: str, body: dict[str, Any], entry: dict[str, Any]
    ) -> tuple[bytes, SealedBundle]:
        """Everything about the grant and the posted bundle that does not need the replay key.

        The posted bytes' SHA-256 is compared with the grant's before they are parsed: the grant opens
        exactly the sealed bundle the server stores, not another one sealed with the same id.
        """
        if self.nonces.used(grant.nonce):
            raise Refused(409, "reused", "grant already used: grants are single use; ask the server for a new one")
        project = self.config.project
        if project not in (str(grant.project_id), grant.project):
            named = f"{grant.project_id} ({grant.project})" if grant.project else str(grant.project_id)
            raise Refused(403, "wrong_project", f"grant is for project {named}, this agent serves {project}")
        encoded = body.get("bundle")
        if not isinstance(encoded, str) or not encoded:
            raise Refused(400, "malformed", "missing bundle: post the sealed bundle as base64 in the 'bundle' field")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise Refused(400, "malformed", "'bundle' is not valid base64 of the sealed bundle") from None
        if len(data) > self.config.max_bundle_bytes:
            raise Refused(413, "too_large", f"bundle is {len(data)} bytes; the limit is {self.config.max_bundle_bytes}")
        posted = entry["posted_sha256"] = bundle_digest(data)
        if not hmac.compare_digest(posted, grant.bundle_sha256):
            raise Refused(
                403,
                "wrong_bundle",
                f"grant is for bundle {grant.bundle_id} with SHA-256 {grant.bundle_sha256}, but the posted bytes have "
                f"SHA-256 {posted}: post the sealed bundle exactly as the FluxRun server serves it "
                f"(GET /v1/runs/{grant.bundle_id}/bundle)",
            )
        try:
            sealed = read_bundle(data)
        except BundleError as exc:
            raise Refused(422, exc.reason, str(exc)) from None
        if sealed.bundle_id != grant.bundle_id:
            raise Refused(403, "wrong_bundle", f"grant is for bundle {grant.bundle_id}, not {sealed.bundle_id}")
        if grant.action != action:
            raise Refused(
                403,
                "wrong_action",
                f"grant is for {grant.action}, not {action}; ask the server for a {action} grant",
            )
        return data, sealed

    def _open(self, data: bytes) -> OpenedBundle:
        try:
            return open_bundle(data, self.config.replay_key, max_payload_size=4 * self.config.max_bundle_bytes)
        except BundleError as exc:
            raise Refused(422, exc.reason, str(exc)) from None

    # --- answers -------------------------------------------------------------------------------------

    def _unlock_result(self, grant: Grant, opened: OpenedBundle) -> dict[str, Any]:
        sealed = opened.sealed
        payload = opened.payload if grant.protected else mask_payload(opened.payload, self.config.scrubber)
        return {
            "bundle_id": sealed.bundle_id,
            "project": self.config.project,
            "protected": grant.protected,
            "masked": not grant.protected,
            "header": {
                "created_at": sealed.created_at,
                "sdk": sealed.header.get("sdk"),
                "signing_key_id": sealed.signing_key_id,
                "recipient_key_id": sealed.recipient_key_id,
            },
            "summary": sealed.summary,
            "payload": payload,
        }

    def _replay(self, grant: Grant, opened: OpenedBundle) -> dict[str, Any]:
        from fluxrun.replay import run

        def shown(value: Any) -> Any:
            return value if grant.protected else mask_text(value, self.config.scrubber)

        base: dict[str, Any] = {
            "bundle_id": opened.sealed.bundle_id,
            "protected": grant.protected,
            "masked": not grant.protected,
        }
        with self._replay_lock:
            try:
                result = run(opened, self.config.replay_key, isolate=True)  # never in this serving process
            except ReplayDivergence as exc:
                error: dict[str, Any] = {"type": "divergence", "message": str(exc), "call": exc.call, "site": exc.site}
                return {**base, "error": {**shown(error), "kind": exc.kind}}
            except LiveIOBlocked as exc:
                error = {"type": "live_io_blocked", "message": str(exc), "host": exc.host, "site": exc.site}
                return {**base, "error": shown(error)}
            except FluxRunError as exc:
                return {**base, "error": shown({"type": "replay_failed", "message": str(exc)})}
            except Exception as exc:  # the app's import or set-up failed: report it, do not 500
                log.exception("replay of %s failed", opened.sealed.bundle_id)
                message = f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"
                return {**base, "error": shown({"type": "replay_failed", "message": message})}
        return {
            **base,
            "entry": result.entry,
            "outcome": result.outcome,
            "original": shown(dataclasses.asdict(result.original)),
            "new": shown(dataclasses.asdict(result.new)),
            "served": result.served,
            "recorded_calls": result.recorded_calls,
            "unconsumed": shown(result.unconsumed),
            "warnings": shown(result.warnings),
            "isolation": result.isolation,
        }


def _note_claims(entry: dict[str, Any], claims: dict[str, Any] | None, *, verified: bool) -> None:
    """Copy who/what a grant names into an audit entry (marked unverified until the signature checks out)."""
    if not claims:
        entry["grant_verified"] = False
        return
    for field in ("bundle_id", "project_id", "project", "nonce", "requested_by", "protected"):
        if field in claims:
            entry[field] = claims[field] if isinstance(claims[field], str | int | bool) else str(claims[field])
    expires = claims.get("expires_at")
    if isinstance(expires, int) and not isinstance(expires, bool):
        entry["grant_expires_at"] = expires
        entry["grant_expires"] = iso(expires) if 0 <= expires < 2**40 else None
    entry["grant_verified"] = verified


def _refusal(status: int, reason: str, message: str) -> JSONResponse:
    headers = {"WWW-Authenticate": 'FluxRun-Grant error="invalid_grant"'} if status == 401 else None
    return JSONResponse({"detail": message, "reason": reason}, status_code=status, headers=headers)


class _PrivateNetworkAccess:
    """Answer Chrome's Private Network Access preflight for the allowed origin.

    A dashboard served from the internet that calls an agent on loopback or the LAN gets a preflight with
    ``Access-Control-Request-Private-Network: true``; without a 2xx answer carrying
    ``Access-Control-Allow-Private-Network: true`` the browser blocks it. Starlette's CORSMiddleware
    refuses such a preflight (400) unless its own private-network option exists and is on, so for the
    configured origin this middleware takes the request header away, lets CORSMiddleware judge the rest
    (method, headers) as for any preflight, and adds the allow header to its 2xx answer. A preflight from
    any other origin passes through untouched, and CORSMiddleware refuses it.
    """

    def __init__(self, app: ASGIApp, origin: str) -> None:
        self.app = app
        self.origin = origin.encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "OPTIONS":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers") or []
        wants = any(
            name == b"access-control-request-private-network" and value.strip().lower() == b"true"
            for name, value in headers
        )
        origins = [value for name, value in headers if name == b"origin"]
        if not wants or origins != [self.origin]:
            await self.app(scope, receive, send)
            return
        inner = {**scope, "headers": [(n, v) for n, v in headers if n != b"access-control-request-private-network"]}

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start" and 200 <= message["status"] < 300:
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"access-control-allow-private-network", b"true")],
                }
            await send(message)

        await self.app(inner, receive, send_with_header)


def build_app(config: AgentConfig) -> Starlette:
    """The agent's Starlette app for `config` (what `create_app`, `mount` and `fluxrun agent` serve)."""
    agent = Agent(config)
    middleware: list[Middleware] = []
    if config.origin is not None:
        middleware.append(Middleware(_PrivateNetworkAccess, origin=config.origin))
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=[config.origin],
                allow_methods=["GET", "POST"],
                allow_headers=["content-type"],
                max_age=600,
            )
        )
    app = Starlette(
        routes=[
            Route("/v1/health", agent.health, methods=["GET"]),
            Route("/v1/unlock", agent.unlock, methods=["POST"]),
            Route("/v1/replay", agent.replay, methods=["POST"]),
        ],
        middleware=middleware,
    )
    app.state.fluxrun_agent = agent
    return app
