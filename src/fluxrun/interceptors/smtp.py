"""Mail through smtplib and aiosmtplib: recorded at capture, answered at replay, never sent again.

`smtplib.SMTP` (and `SMTP_SSL`, `LMTP`): `connect`, `helo`, `ehlo`, `starttls`, `login`, `sendmail`,
`send_message`, `noop`, `rset` and `quit` are each one call, recorded with the server's reply or the
smtplib exception. `aiosmtplib.SMTP`'s methods of the same names likewise (so `aiosmtplib.send` too).
A message is recorded with its sender, recipients and bytes; `login` records that a login happened and
the user, never the password (nor does `connect` record aiosmtplib's `password`).

At replay nothing connects: `SMTP("host")` answers its connect from the recording (and takes its local
name from `socket.gethostname()`, not a DNS lookup; `make_msgid()`'s `getfqdn()` is answered so too),
`ehlo` restores the recorded extensions so `has_extn` answers as it did, and a message matches a recorded one
by sender, recipients and content. What is made anew each time is left out of the comparison: the `Date` and
`Message-ID` headers, and MIME boundaries (the email package draws them at random), which are compared as
`=_boundary-N_=` in the order they are declared.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from typing import Any

import wrapt

from fluxrun._diff import short_diff
from fluxrun.interceptors.api import (
    Patch,
    active,
    answer,
    decode,
    encode,
    fields_match,
    loaded,
    record,
    record_async,
    replaying,
)
from fluxrun.model.schema import AnyEvent

__all__ = ["SmtpInterceptor"]

KIND = "smtp"
_VOLATILE = re.compile(rb"^(date|message-id):[^\n]*\n(?:[ \t][^\n]*\n)*", re.IGNORECASE | re.MULTILINE)
_FEATURE = re.compile(r"(?P<feature>[A-Za-z0-9][A-Za-z0-9\-]*) ?")


# -- what is recorded -------------------------------------------------------------------------------------
def message_bytes(message: Any) -> bytes:
    """A message as sent: bytes as given, text encoded, an `email.message.Message` flattened."""
    if isinstance(message, (bytes, bytearray, memoryview)):
        return bytes(message)
    if isinstance(message, str):
        return message.encode("utf-8", "surrogateescape")
    try:
        return bytes(message.as_bytes())
    except Exception:
        return str(message).encode("utf-8", "replace")


def _comparable(content: bytes) -> bytes:
    """A message for matching: line ends normalised, Date and Message-ID headers dropped and MIME boundaries
    numbered (all made anew each run)."""
    text = content.replace(b"\r\n", b"\n")
    head, sep, body = text.partition(b"\n\n")
    return _numbered_boundaries(_VOLATILE.sub(b"", head + b"\n") + sep + body)


_BOUNDARY = re.compile(rb'boundary=(?:"([^"\n]{1,200})"|([^";\s]{1,200}))', re.IGNORECASE)
_BOUNDARIES_NUMBERED = 64  # a message nests a few multiparts; past this many, boundaries compare as they are


def _numbered_boundaries(text: bytes) -> bytes:
    """Each boundary a part declares, where declared and on its delimiter lines (`--B`, `--B--`), replaced by
    `=_boundary-N_=`: N counts them in the order they are declared, so the message's structure is compared."""
    seen: list[bytes] = []
    for match in _BOUNDARY.finditer(text):
        boundary = match.group(1) or match.group(2)
        if boundary not in seen and len(seen) < _BOUNDARIES_NUMBERED:
            seen.append(boundary)
    for number, boundary in enumerate(seen, 1):
        placeholder = b"=_boundary-%d_=" % number
        escaped = re.escape(boundary)
        text = re.sub(
            rb'(boundary=)(?:"' + escaped + rb'"|' + escaped + rb"(?=[;\s]|$))",
            rb'\1"' + placeholder + b'"',
            text,
            flags=re.IGNORECASE,
        )
        text = re.sub(
            rb"^--" + escaped + rb"(--)?(?=[ \t]*$)",
            b"--" + placeholder.replace(b"\\", b"\\\\") + rb"\1",
            text,
            flags=re.MULTILINE,
        )
    return text


def _recipients(to: Any) -> list[str]:
    if isinstance(to, (str, bytes)):
        return [to.decode() if isinstance(to, bytes) else to]
    return [t.decode() if isinstance(t, bytes) else str(t) for t in (to or [])]


def _message_addresses(message: Any, sender: Any, to: Any) -> tuple[Any, list[str]]:
    """The sender and recipients `send_message` uses: the ones given, else the message's own headers."""
    import email.utils

    if sender is None:
        sender = message.get("Sender") or message.get("From")
    if to is None:
        fields = [f for h in ("To", "Cc", "Bcc") for f in message.get_all(h, [])]
        to = [address for _name, address in email.utils.getaddresses(fields)]
    return sender, _recipients(to)


def _mail_data(client: str, op: str, sender: Any, to: Any, message: Any, **extra: Any) -> dict[str, Any]:
    content = message_bytes(message)
    return {
        "client": client,
        "op": op,
        "from": encode(sender),
        "to": _recipients(to),
        "message": encode(content),
        **{k: encode(v) for k, v in extra.items()},
    }


def _mail_match(made: dict[str, Any]) -> Any:
    """Same sender and recipients, and the same message apart from its Date and Message-ID headers."""
    addresses = fields_match(made, ["op", "from", "to"])
    content = _comparable(decode(made["message"]))

    def match(event: AnyEvent) -> str | None:
        why = addresses(event)
        if why is not None:
            return why
        try:
            recorded = decode(event["data"].get("message"))
        except Exception:
            recorded = b""
        if isinstance(recorded, bytes) and _comparable(recorded) == content:
            return None
        return "the message differs:\n" + short_diff(
            _comparable(recorded if isinstance(recorded, bytes) else b"").decode("utf-8", "replace"),
            content.decode("utf-8", "replace"),
        )

    return match


def _matcher(name: str, data: dict[str, Any]) -> Any:
    if name == "connect":
        return fields_match(data, ["op", "host", "port"])
    if name == "login":
        return fields_match(data, ["op", "user"])
    if name in ("sendmail", "send_message"):
        return _mail_match(data)
    return fields_match(data, ["op"])


def _plain(value: Any) -> Any:
    """aiosmtplib's `SMTPResponse` tuples as plain (code, message) tuples, anywhere in a result."""
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _recorded_plain(value: Any) -> Any:
    return encode(_plain(value))


# -- smtplib -----------------------------------------------------------------------------------------------
def _smtplib_data(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    if name == "connect":
        host = args[0] if args else kwargs.get("host", "localhost")
        port = args[1] if len(args) > 1 else kwargs.get("port", 0)
        return {"client": "smtplib", "op": name, "host": host, "port": port}
    if name == "login":
        user = args[0] if args else kwargs.get("user")
        return {"client": "smtplib", "op": name, "user": encode(user)}  # never the password
    if name == "sendmail":
        sender = args[0] if args else kwargs.get("from_addr")
        to = args[1] if len(args) > 1 else kwargs.get("to_addrs")
        message = args[2] if len(args) > 2 else kwargs.get("msg")
        return _mail_data("smtplib", name, sender, to, message)
    if name == "send_message":
        message = args[0] if args else kwargs.get("msg")
        sender, to = _message_addresses(
            message,
            args[1] if len(args) > 1 else kwargs.get("from_addr"),
            args[2] if len(args) > 2 else kwargs.get("to_addrs"),
        )
        return _mail_data("smtplib", name, sender, to, message)
    return {"client": "smtplib", "op": name}


def _smtplib_after_replay(smtp: Any, name: str, args: tuple[Any, ...], reply: Any) -> None:
    """Set the state the real method leaves on the object, so the app's next checks see what they saw."""
    if name == "ehlo" and isinstance(reply, tuple) and len(reply) == 2:
        code, msg = reply
        smtp.ehlo_resp = msg
        smtp.does_esmtp = code == 250
        smtp.esmtp_features = {}
        if code == 250 and isinstance(msg, bytes):
            for line in msg.decode("latin-1").split("\n")[1:]:
                match = _FEATURE.match(line)
                if match:
                    feature = match.group("feature").lower()
                    params = line[match.end("feature") :].strip()
                    if feature == "auth":
                        params = smtp.esmtp_features.get("auth", "") + " " + params  # as smtplib keeps it
                    smtp.esmtp_features[feature] = params
    elif name == "helo" and isinstance(reply, tuple) and len(reply) == 2:
        smtp.helo_resp = reply[1]
    elif name in ("starttls", "quit"):
        smtp.helo_resp = smtp.ehlo_resp = None
        smtp.esmtp_features = {}
        smtp.does_esmtp = False
        if name == "quit":
            smtp.close()


def _smtplib_wrapper(name: str) -> Callable[..., Any]:
    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        scope = active()
        if scope is None:
            return wrapped(*args, **kwargs)
        data = _smtplib_data(name, args, kwargs)
        call = f"smtp {name}"
        if replaying(scope):
            event = answer(scope, KIND, call, _matcher(name, data))
            reply = decode(event["data"].get("result"))
            _smtplib_after_replay(instance, name, args, reply)
            return reply
        return record(scope, KIND, call, data, lambda: wrapped(*args, **kwargs))

    return wrapper


def _smtplib_init(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """At replay, `SMTP()` takes its local name without a reverse DNS lookup (`socket.getfqdn`)."""
    scope = active()
    if scope is not None and replaying(scope):
        if len(args) >= 3 and args[2] is None:  # SMTP_SSL passes it on positionally
            args = (*args[:2], socket.gethostname(), *args[3:])
        elif len(args) < 3 and kwargs.get("local_hostname") is None:
            kwargs = {**kwargs, "local_hostname": socket.gethostname()}
    return wrapped(*args, **kwargs)


SMTPLIB_METHODS = ("connect", "helo", "ehlo", "starttls", "login", "sendmail", "send_message", "noop", "rset", "quit")


# -- aiosmtplib --------------------------------------------------------------------------------------------
def _aiosmtplib_data(smtp: Any, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    if name == "connect":
        return {
            "client": "aiosmtplib",
            "op": name,
            "host": kwargs.get("hostname") if isinstance(kwargs.get("hostname"), str) else smtp.hostname,
            "port": kwargs.get("port") if isinstance(kwargs.get("port"), int) else smtp.port,
            "user": encode(
                kwargs["username"]
                if isinstance(kwargs.get("username"), (str, bytes))
                else getattr(smtp, "_login_username", None)
            ),
        }  # never the password
    if name == "login":
        return {"client": "aiosmtplib", "op": name, "user": encode(args[0] if args else kwargs.get("username"))}
    if name == "sendmail":
        return _mail_data("aiosmtplib", name, args[0], args[1], args[2])
    if name == "send_message":
        message = args[0]
        sender, to = _message_addresses(message, kwargs.get("sender"), kwargs.get("recipients"))
        return _mail_data("aiosmtplib", name, sender, to, message)
    return {"client": "aiosmtplib", "op": name}


def _aiosmtplib_reply(name: str, value: Any) -> Any:
    from aiosmtplib import SMTPResponse

    if name in ("sendmail", "send_message") and isinstance(value, tuple) and len(value) == 2:
        errors, message = value
        return {k: SMTPResponse(*v) for k, v in (errors or {}).items()}, message
    if isinstance(value, tuple) and len(value) == 2:
        return SMTPResponse(*value)
    return value


def _aiosmtplib_wrapper(name: str) -> Callable[..., Any]:
    def wrapper(wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        scope = active()
        if scope is None:
            return wrapped(*args, **kwargs)
        data = _aiosmtplib_data(instance, name, args, kwargs)
        call = f"smtp {name}"
        if replaying(scope):

            async def replay() -> Any:
                event = answer(scope, KIND, call, _matcher(name, data))
                reply = _aiosmtplib_reply(name, decode(event["data"].get("result")))
                if name == "ehlo":
                    instance.last_ehlo_response = reply
                return reply

            return replay()
        return record_async(scope, KIND, call, data, lambda: wrapped(*args, **kwargs), result=_recorded_plain)

    return wrapper


AIOSMTPLIB_METHODS = SMTPLIB_METHODS


class SmtpInterceptor:
    """smtplib's `SMTP` (its subclasses inherit the patches) and, when installed, aiosmtplib's `SMTP`."""

    kind = KIND

    def patches(self) -> list[Patch]:
        patches: list[Patch] = []
        smtplib = loaded("smtplib")
        if smtplib is not None:
            owner = smtplib.SMTP
            patches.append(Patch(owner, "__init__", wrapt.FunctionWrapper(vars(owner)["__init__"], _smtplib_init)))
            for name in SMTPLIB_METHODS:
                replacement = wrapt.FunctionWrapper(vars(owner)[name], _smtplib_wrapper(name))
                patches.append(Patch(owner, name, replacement))
        aiosmtplib = loaded("aiosmtplib.smtp")
        if aiosmtplib is not None:
            owner = aiosmtplib.SMTP
            for name in AIOSMTPLIB_METHODS:
                if name in vars(owner):
                    replacement = wrapt.FunctionWrapper(vars(owner)[name], _aiosmtplib_wrapper(name))
                    patches.append(Patch(owner, name, replacement))
        return patches

    def rebind(self) -> dict[int, Any]:
        return {}
