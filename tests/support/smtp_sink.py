"""An aiosmtpd server on a free loopback port that keeps every message it is sent (AUTH allowed without TLS)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from servers import free_port


@dataclass
class Sink:
    host: str
    port: int
    messages: list[dict[str, Any]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd calls this hook by name
        self.messages.append(
            {"from": envelope.mail_from, "to": list(envelope.rcpt_tos), "content": bytes(envelope.content)}
        )
        return "250 Message accepted for delivery"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        self.logins.append(auth_data.login.decode())
        return AuthResult(success=auth_data.password == b"right-password")


@contextmanager
def smtp_sink() -> Iterator[Sink]:
    sink = Sink("127.0.0.1", free_port())
    controller = Controller(
        sink, hostname=sink.host, port=sink.port, authenticator=sink.authenticate, auth_require_tls=False
    )
    controller.start()
    try:
        yield sink
    finally:
        controller.stop()
