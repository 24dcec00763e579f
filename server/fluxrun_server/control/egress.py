"""Where the server may send webhooks: public addresses only, checked when a rule is made and again at send.

A webhook target is chosen by a workspace member, and the server POSTs to it from inside the operator's
network (and shows admins the start of the answer in the dead-letter list). Without a check a member could
reach loopback services, the cloud metadata endpoint (169.254.169.254) or the private network: SSRF.

- When a rule is created, a target that is, or resolves to, a loopback, private, link-local, shared
  (CGNAT), multicast, reserved or unspecified address is refused. A name that does not resolve yet is
  accepted: the send-time check decides.
- At send time the name is resolved again, every address is checked, and the connection goes to a checked
  address (the TCP connect is pinned to it; TLS still verifies the certificate for the name). So a name
  that resolves to a public address when checked and to 127.0.0.1 a moment later (DNS rebinding) cannot
  redirect the POST. Redirects are never followed, and at most `_MAX_ANSWER` bytes of an answer are read.
- `FLUXRUN_CONTROL_WEBHOOK_ALLOW_PRIVATE=true` lets an operator allow private targets (tests, on-premises
  receivers on the LAN). Webhooks do not use HTTP proxies from the environment.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore

__all__ = ["TargetRefused", "WebhookAnswer", "check_target", "is_public", "post_webhook", "resolve_public"]

_MAX_ANSWER = 4096  # bytes of a receiver's answer kept for the dead-letter list
_MAX_URL = 2048
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class TargetRefused(ValueError):
    """The webhook target is not a public http(s) address; the message says why and what to do."""


@dataclass(frozen=True)
class WebhookAnswer:
    status: int
    text: str  # the start of the body, decoded leniently


def is_public(address: str) -> bool:
    """True for an address on the public internet (not loopback, private, link-local, CGNAT, multicast...)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 scope id ("fe80::1%eth0") is link-local anyway
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if mapped is None and ip in _NAT64:  # 64:ff9b::a.b.c.d reaches a.b.c.d through a NAT64 gateway
            mapped = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if mapped is not None:
            return is_public(str(mapped))
    return bool(ip.is_global) and not ip.is_multicast


def _split(url: str) -> tuple[str, str, int]:
    if len(url) > _MAX_URL:
        raise TargetRefused(f"webhook target is {len(url)} characters long; at most {_MAX_URL}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"webhook target {url[:200]!r} is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetRefused(f"webhook target {url[:200]!r} must be an http:// or https:// URL with a host")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        return None


def _refused(url: str, host: str, address: str) -> TargetRefused:
    return TargetRefused(
        f"webhook target {url[:200]!r}: {host} is {address}, a loopback, private, link-local or otherwise "
        "non-public address; webhooks go to public addresses only (an operator may allow private ones with "
        "FLUXRUN_CONTROL_WEBHOOK_ALLOW_PRIVATE=true)"
    )


def resolve_public(url: str, *, allow_private: bool = False, must_resolve: bool = True) -> list[str]:
    """The addresses to send `url` to, every one checked; raises TargetRefused. With `must_resolve` False,
    a name that does not resolve gives [] instead (rule creation: the send-time check decides)."""
    _scheme, host, port = _split(url)
    literal = _literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            if must_resolve:
                raise TargetRefused(f"webhook target {url[:200]!r}: {host} does not resolve ({exc})") from None
            return []
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not allow_private:
        for address in addresses:
            if not is_public(address):
                raise _refused(url, host, address)
    return addresses


def check_target(url: str, *, allow_private: bool = False) -> None:
    """For rule creation: refuse a target that is, or now resolves to, a non-public address (with private
    targets allowed, only the URL's shape is checked: nothing to resolve for)."""
    if allow_private:
        _split(url)
        return
    resolve_public(url, must_resolve=False)


class _PinnedBackend(httpcore.SyncBackend):
    """Connects to the checked addresses, whatever host the request names (TLS still checks that name)."""

    def __init__(self, addresses: Sequence[str]) -> None:
        self.addresses = list(addresses)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        error: Exception | None = None
        for address in self.addresses:
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error or httpcore.ConnectError(f"no address to connect to for {host}")


def post_webhook(
    url: str, body: bytes, headers: Mapping[str, str], *, timeout: float, allow_private: bool = False
) -> WebhookAnswer:
    """POST `body` to `url` after the send-time check, connected to a checked address; no redirects."""
    addresses = resolve_public(url, allow_private=allow_private)
    pool = httpcore.ConnectionPool(
        ssl_context=ssl.create_default_context(), network_backend=_PinnedBackend(addresses), max_connections=1
    )
    limits = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
    with (
        pool,
        pool.stream(
            "POST", url, headers=list(headers.items()), content=body, extensions={"timeout": limits}
        ) as response,
    ):
        kept = b""
        for chunk in response.iter_stream():
            kept += chunk
            if len(kept) >= _MAX_ANSWER:
                break
    return WebhookAnswer(response.status, kept[:_MAX_ANSWER].decode("utf-8", "replace"))
