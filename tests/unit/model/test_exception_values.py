"""A recorded exception comes back at replay as the app read it: its message, and the details it carries."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.pq import DiagnosticField

from fluxrun.model.values import decode, encode


def round_trip(exc: BaseException) -> BaseException:
    rebuilt = decode(encode(exc))
    assert type(rebuilt) is type(exc)
    return rebuilt  # type: ignore[no-any-return]


def test_a_unicode_error_keeps_its_message_and_fields():
    with pytest.raises(UnicodeDecodeError) as raised:
        b"\x89PNG".decode("utf-8")
    rebuilt = round_trip(raised.value)
    assert str(rebuilt) == str(raised.value)  # str() reads fields only the constructor fills
    assert (rebuilt.encoding, rebuilt.object, rebuilt.start, rebuilt.end, rebuilt.reason) == (  # type: ignore[attr-defined]
        "utf-8",
        b"\x89PNG",
        0,
        1,
        "invalid start byte",
    )


def test_an_os_error_keeps_its_errno_and_strerror():
    rebuilt = round_trip(ConnectionRefusedError(111, "Connection refused"))
    assert (rebuilt.errno, rebuilt.strerror) == (111, "Connection refused")  # type: ignore[attr-defined]
    assert str(rebuilt) == "[Errno 111] Connection refused"


def test_a_psycopg_error_keeps_its_diagnostics():
    info = {
        DiagnosticField.SQLSTATE: b"23505",
        DiagnosticField.CONSTRAINT_NAME: b"users_email_key",
        DiagnosticField.MESSAGE_DETAIL: b"Key (email)=(ann@example.com) already exists.",
    }
    error = psycopg.errors.UniqueViolation("duplicate key value violates unique constraint", info=info)
    rebuilt = round_trip(error)
    assert rebuilt.diag.constraint_name == "users_email_key"  # type: ignore[attr-defined]
    assert rebuilt.diag.message_detail == "Key (email)=(ann@example.com) already exists."  # type: ignore[attr-defined]
    assert rebuilt.sqlstate == "23505"  # type: ignore[attr-defined]
    assert rebuilt.pgconn is None  # type: ignore[attr-defined]
