"""What the database interceptors share: one event kind ("db"), statement matching, row limits, DSN masking.

Every driver (sqlite3, psycopg, asyncpg) records the same shape of event, `data` holding:

- `driver`, `op` (`connect`, `execute`, `executemany`, `commit`, `rollback`, `begin`, ...),
- `sql` (normalised, see `normalise_sql`) and `params` (encoded with `values.encode`),
- `result`: `description`, `rows` (encoded), `rowcount`, `lastrowid`, and `truncated`/`limit` when more
  rows came back than the row limit allows (`max_db_rows`, `FLUXRUN_MAX_DB_ROWS`, default 10,000).

Matching at replay is deliberately simple: within the task that made it, a statement matches a recorded
one when the operation, the normalised SQL text (whitespace runs collapsed to one space, ends trimmed,
nothing else: case and literals count) and the encoded parameters are equal. A different statement
raises `ReplayDivergence` showing the recorded statement beside the one made. The event's `call` (what
summaries show) is the statement with its literals replaced by `?`, and a connection's target with its
password masked: no values, no secrets. The password itself is never recorded.

Connection setup profiles (warm pools). Every connection gets a `Profile` when it opens, inside an execution
or not: its connect (target, server version and parameters) and, in order, what was asked while it was being
set up, that is while SQLAlchemy's pool was connecting it (`_ConnectionRecord.__connect`: the dialect's
`initialize` and `on_connect`, version and isolation queries, type codecs), at most `SETUP_MAX_CALLS` calls.
An execution's first use of a connection records one `connect` event carrying that profile (`opened`:
"during" the execution or "before" it, from a warm pool), so a capture taken on a warm pool still holds
what a fresh process asks when it connects. At replay the connect is answered by that event and, while the
replayed connection is being set up, its setup calls are answered from the profile: never executed, never
counted as the app's IO, never invented (a setup call the profile lacks diverges, naming it).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import re
import sys
import weakref
import zoneinfo
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from itertools import chain
from types import FrameType
from typing import Any, cast

from fluxrun._context import Scope
from fluxrun._diff import short_diff
from fluxrun._internal import SiteRef, first_app_frame, report_internal_error, site_of, site_ref
from fluxrun.answering import Matcher
from fluxrun.errors import LiveIOBlocked
from fluxrun.interceptors.base import Patch, loaded, raise_recorded_error
from fluxrun.interceptors.hot_path import append_value, as_data, detached_call, end_call, fail_call, start_call
from fluxrun.model.recording import CallEntry
from fluxrun.model.schema import AnyEvent, DbData, EventDict
from fluxrun.model.values import MAX_BYTES, all_plain, decode, encode

__all__ = [
    "DEFAULT_ROW_LIMIT",
    "KIND",
    "PG_PARAMETERS",
    "DjangoConnectSeam",
    "Profile",
    "SqlalchemyConnectSeam",
    "answer_build",
    "begin",
    "begin_from",
    "finish",
    "label",
    "mask_dsn",
    "mixed_in",
    "normalise_sql",
    "row_limit",
    "serve",
    "setting_up",
    "start",
]

KIND = "db"
DEFAULT_ROW_LIMIT = 10_000
_LABEL_MAX = 160

_SPACE = re.compile(r"\s+")
# string literals ('it''s', E'..', $$..$$) and numbers standing alone: replaced by ? in labels
_LITERAL = re.compile(r"'(?:[^']|'')*'|\$\$.*?\$\$|(?<![\w$])-?\d+(?:\.\d+)?(?![\w])", re.DOTALL)
_PASSWORD_KV = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^/@\s:]*:)([^@\s]*)(@)")


_CACHE_SIZE = 1024  # statements an app repeats: their normalised text and label are computed once
_normalised: dict[str, str] = {}
_labels: dict[tuple[str, str, str], str] = {}


def normalise_sql(sql: Any) -> str:
    """The statement as matched: text (bytes decoded), whitespace runs collapsed to one space, ends trimmed."""
    if type(sql) is str:
        known = _normalised.get(sql)
        if known is None:
            if len(_normalised) >= _CACHE_SIZE:
                _normalised.clear()
            known = _normalised[sql] = _SPACE.sub(" ", sql).strip()
        return known
    if isinstance(sql, (bytes, bytearray, memoryview)):
        sql = bytes(sql).decode("utf-8", "replace")
    elif not isinstance(sql, str):
        sql = _composed_text(sql)
    return _SPACE.sub(" ", sql).strip()


def _composed_text(sql: Any) -> str:
    """psycopg's `sql.SQL`/`Composed` objects: their text without a connection, else their repr."""
    as_string = getattr(sql, "as_string", None)
    if as_string is not None:
        try:
            return str(as_string(None))
        except Exception:
            pass
    return str(sql)


def label(driver: str, op: str, sql: str | None = None) -> str:
    """What summaries show for a call: `sqlite3 execute INSERT INTO t (a) VALUES (?)`, literals replaced."""
    if sql is None:
        return f"{driver} {op}"
    key = (driver, op, sql)
    known = _labels.get(key)
    if known is None:
        shown = _LITERAL.sub("?", sql)
        if len(shown) > _LABEL_MAX:
            shown = shown[: _LABEL_MAX - 1] + "…"
        if len(_labels) >= _CACHE_SIZE:
            _labels.clear()
        known = _labels[key] = f"{driver} {op} {shown}"
    return known


def mask_dsn(dsn: Any) -> str:
    """A connection string or URL with its password replaced by `[Filtered]` (it is never recorded)."""
    from fluxrun.scrub import MASK

    text = str(dsn)
    text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}{m.group(3)}", text)
    return _PASSWORD_KV.sub(lambda m: f"{m.group(1)}{MASK}", text)


def connect_target(dsn: Any, kwargs: dict[str, Any], left_out: tuple[str, ...]) -> str:
    """A libpq driver's connect target as shown (psycopg, psycopg2): the DSN and the keyword arguments but
    `left_out` (the driver's own options), secrets masked."""
    shown = mask_dsn(dsn or "")
    extra = mask_kwargs({k: v for k, v in kwargs.items() if k not in left_out})
    if extra:
        shown = (shown + " " + " ".join(f"{k}={v}" for k, v in extra.items())).strip()
    return shown


def not_replayable(driver: str) -> LiveIOBlocked:
    """The error for a connection opened before the replay started and used inside it."""
    return LiveIOBlocked(
        f"a {driver} connection opened before the replay started was used inside it; FluxRun answers only "
        "connections opened during the execution (open them in the request, or from a pool the app creates)"
    )


def connect_refused(driver: str, target: str) -> LiveIOBlocked:
    """A libpq driver's connect outside any execution while a replay runs here (the app's start-up, a pool's own
    threads): libpq's socket is C, out of reach of the replay's socket blocks, so it is refused before libpq is
    called."""
    return LiveIOBlocked(
        f"replay blocked a {driver} connection to {target} opened outside the replayed execution (at start-up, "
        "or by a pool's own threads): replay never reaches live systems, and answers the connections the "
        "execution uses from the recording",
        host=target,
    )


def mask_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Connection keyword arguments with secrets masked, and only plain values kept (as text)."""
    from fluxrun.scrub import MASK, default_scrubber

    scrubber = default_scrubber()
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if scrubber.is_sensitive_key(key) or key.lower() in ("password", "passwd", "passfile"):
            out[key] = MASK
        elif value is None or isinstance(value, (str, int, float, bool)):
            out[key] = mask_dsn(value) if isinstance(value, str) else value
        else:
            out[key] = f"<{type(value).__name__}>"
    return out


_install: Any = None  # fluxrun.interceptors.install, bound on first use (it imports this module)


def row_limit() -> int:
    """Rows kept of one result: `fluxrun.init(max_db_rows=...)`, else FLUXRUN_MAX_DB_ROWS, else 10,000."""
    try:
        return _install._installation.db_row_limit  # type: ignore[no-any-return]  # installed
    except AttributeError:  # `install` not imported here yet, or nothing installed
        return _row_limit_uninstalled()


def _row_limit_uninstalled() -> int:
    global _install
    if _install is None:
        from fluxrun.interceptors import install

        _install = install
    installation = _install._installation  # `install.current_installation()`, without its call
    if installation is not None:
        return installation.db_row_limit  # type: ignore[no-any-return]
    raw = os.environ.get("FLUXRUN_MAX_DB_ROWS", "")
    return int(raw) if raw.isdigit() else DEFAULT_ROW_LIMIT


# -- where a call was made -------------------------------------------------------------------------------
def app_frame() -> FrameType | None:
    """The nearest frame of the app's own code (past FluxRun, the driver and SQLAlchemy), else the driver's caller."""
    return first_app_frame(sys._getframe(2), skip_generated=True)  # not `<sqlalchemy generated ...>`


def app_site() -> SiteRef | str:
    """`app_frame`'s site, formatted only if the execution is kept (`site_ref`)."""
    frame = app_frame()
    return site_ref(frame) if frame is not None else "?:?:0"


# -- recording ---------------------------------------------------------------------------------------------
def start(scope: Scope, call: str, data: dict[str, Any], caller: FrameType | None = None) -> CallEntry | None:
    """Append a db call to the log (an entry that `finish`/`fail` complete). `caller`: the frame that called the
    driver, where the walk to the app's frame starts (else it starts at `start`'s caller, past FluxRun's frames:
    each one walked is a frame object made)."""
    try:
        if caller is None:
            return start_call(scope, KIND, call, app_site(), data)
        frame = first_app_frame(caller, skip_generated=True)
        site = (frame.f_globals.get("__name__", "?"), frame.f_code, frame.f_lasti) if frame is not None else "?:?:0"
        return start_call(scope, KIND, call, site, data)  # `site_ref(frame)`, inlined
    except Exception as exc:
        report_internal_error("db capture", exc)
        return None


def finish(
    entry: CallEntry | None, result: dict[str, Any] | tuple[Any, ...] | None = None, scope: Scope | None = None
) -> None:
    """The call returned: its duration and its `result` (a dict, or what the entry's `build` formats). With the
    execution's `scope`, its completion number too, so that replay answers it in the recorded order among the
    calls of other threads and tasks (`end_call`)."""
    if entry is None:
        return
    try:
        if not end_call(entry, scope):
            return  # the execution had ended: the app never saw this answer
        if result is not None:
            entry.value["result"] = result
    except Exception as exc:
        report_internal_error("db capture", exc)


def answer_build(
    answer: Callable[[tuple[Any, ...]], dict[str, Any]], where: str
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The `build` of a statement whose answer `finish` kept as a tuple of parts that cannot change: `answer`
    formats it when the execution is sealed (most are dropped first). A part it cannot format leaves the
    statement recorded without its answer (replay refuses it), reported under `where`, rather than unsealed."""

    def build(data: dict[str, Any]) -> dict[str, Any]:
        taken = data.get("result")
        if type(taken) is tuple:
            try:
                data["result"] = answer(taken)
            except Exception as exc:
                report_internal_error(where, exc)
                data["result"] = None
        return data

    return build


@functools.cache
def mixed_in(mixin: type, home: type) -> type:
    """`home` (a driver's cursor class) with `mixin` in front, made once: it adds no instance layout
    (`mixin` has empty `__slots__`), so a cursor's `__class__` can switch to it and back."""
    namespace = {"__module__": home.__module__, "__qualname__": home.__qualname__, "__slots__": ()}
    return type(home.__name__, (mixin, home), namespace)


def fail(entry: CallEntry | None, exc: BaseException) -> None:
    if entry is None:
        return
    try:
        fail_call(entry, exc)
    except Exception as internal:
        report_internal_error("db capture", internal)


def encode_params(params: Any) -> Any:
    if params is None:
        return None
    kind = type(params)
    if kind is dict or kind is list:  # `encode` copies them (or builds new ones) itself
        return encode(params) if params else kind()
    if isinstance(params, (list, tuple)):
        return encode(list(params))
    if isinstance(params, dict):
        return encode(dict(params))
    try:
        if hasattr(params, "__len__") and hasattr(params, "__getitem__") and not hasattr(params, "keys"):
            return encode([params[i] for i in range(len(params))])  # the indices a driver reads, not one past
        return encode(list(params))
    except TypeError:
        return encode(params)


def rows_result(
    rows: Sequence[Any],
    *,
    limit: int,
    more: bool,
    description: Any = None,
    rowcount: Any = None,
    lastrowid: Any = None,
    **extra: Any,
) -> dict[str, Any]:
    """A statement's answer as recorded: rows (encoded, at most `limit`), and a mark when more came back."""
    encoded, zones = encode_rows(rows if len(rows) <= limit else rows[:limit])
    result: dict[str, Any] = {
        "description": _encode_rows(description) if description is not None else None,
        "rows": encoded,
        "rowcount": rowcount,
        "lastrowid": None if lastrowid is None else encode(lastrowid),
        **extra,
    }
    if zones:
        result["zones"] = zones
    if more or len(rows) > limit:
        result["truncated"] = True
        result["limit"] = limit
    return result


_ROW_TYPES = frozenset((tuple, list))


def _plain_rows(items: Sequence[Any]) -> list[list[Any]] | None:
    """Rows (or column descriptions) copied as lists when each is a tuple or list of plain JSON values (the
    usual case: one pass over the values, the copies made in C), else None."""
    if len(items) == 1:  # one row (or column): what the C calls below would cost more than they save
        item = items[0]
        return [list(item)] if type(item) in _ROW_TYPES and all_plain(item, MAX_BYTES) else None
    if _ROW_TYPES.issuperset(map(type, items)) and all_plain(chain.from_iterable(items), MAX_BYTES):
        return list(map(list, items))
    return None


def _encode_rows(items: Sequence[Any]) -> Any:
    """Rows (or column descriptions) encoded as lists: copied as they are when every value is plain JSON, else
    through `encode`."""
    plain = _plain_rows(items)
    if plain is not None:
        return plain
    return encode([list(r) if isinstance(r, (tuple, list)) else r for r in items])


def encode_rows(kept: Sequence[Any]) -> tuple[Any, list[list[Any]] | None]:
    """The rows a result keeps, encoded (`_encode_rows`), and the named time zones of their datetimes
    (`_zones`; None when every value is plain, which a datetime is not)."""
    count = len(kept)
    if count < 2:  # no row, or one: `_plain_rows` inlined
        if not count:
            return [], None
        row = kept[0]
        if type(row) in _ROW_TYPES and all_plain(row, MAX_BYTES):
            return [list(row)], None
    plain = _plain_rows(kept)
    if plain is not None:
        return plain, None
    return encode([list(r) if isinstance(r, (tuple, list)) else r for r in kept]), _zones(kept)


def _zones(rows: Sequence[Any]) -> list[list[Any]]:
    """Named time zones of datetime columns ([row, column, key]): the value encoder keeps only the offset."""
    out: list[list[Any]] = []
    for r, row in enumerate(rows):
        if not isinstance(row, (tuple, list)):
            continue
        for c, value in enumerate(row):
            if isinstance(value, datetime.datetime) and isinstance(value.tzinfo, zoneinfo.ZoneInfo):
                out.append([r, c, value.tzinfo.key])
    return out


def recorded_rows(result: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    rows = [list(row) if isinstance(row, (list, tuple)) else row for row in decode(result.get("rows") or [])]
    for r, c, key in result.get("zones") or ():
        with contextlib.suppress(Exception):
            rows[r][c] = rows[r][c].astimezone(zoneinfo.ZoneInfo(key))  # same instant, the recorded zone
    return [tuple(row) if isinstance(row, list) else row for row in rows]


# -- connection setup profiles (see the module docstring) ---------------------------------------------------
SETUP_MAX_CALLS = 64


class Profile:
    """How one connection was set up: its connect data (no password) and the calls made while setting it up.

    At capture `setup` holds log entries (see `start`) and `inherited` the setup of the first connection of the
    same pool (where SQLAlchemy initialised its dialect, which a fresh process does on whichever connection it
    opens first); at replay `setup` holds the recorded calls not yet answered. None: not recorded (the
    connection was opened before FluxRun was installed)."""

    __slots__ = ("__weakref__", "connect", "inherited", "replaying", "seen", "setup", "truncated")

    def __init__(self, connect: dict[str, Any], setup: list[Any] | None, *, replaying: bool = False) -> None:
        self.connect = connect
        self.setup = setup
        self.inherited: list[Any] | None = None
        self.truncated = False
        self.replaying = replaying
        self.seen: deque[tuple[int, int]] = deque(maxlen=8)  # executions already holding its connect event

    def event_data(self, opened: str) -> dict[str, Any]:
        """The `connect` event an execution records for this connection."""
        data = dict(self.connect)
        data["opened"] = opened
        if self.setup is None:
            data["setup"] = None
        else:
            data["setup"] = [_setup_call(e) for e in [*self.setup, *(self.inherited or ())]]
        if self.truncated:
            data["setup_truncated"] = SETUP_MAX_CALLS
        return data


def _setup_call(entry: CallEntry) -> dict[str, Any]:
    call = dict(entry.build(entry.value))
    if entry.error is not None:
        call["error"] = entry.error
    return call


# The server parameters a PostgreSQL driver's connect event records (psycopg, psycopg2): what libpq reports
# after the startup, which a replayed connection answers in its place.
PG_PARAMETERS = (
    "client_encoding",
    "server_encoding",
    "server_version",
    "standard_conforming_strings",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "integer_datetimes",
    "application_name",
)


# every connection opened while FluxRun is installed -> its profile
_profiles: weakref.WeakKeyDictionary[Any, Profile] = weakref.WeakKeyDictionary()
_profile_refs: dict[Any, Profile] = _profiles.data  # type: ignore[attr-defined]
# connections being set up right now -> their profile. Empty nearly always: a driver's idle path reads
# `if setting_up` (one global) before anything else.
setting_up: dict[Any, Profile] = {}
# the connections opened by the SQLAlchemy pool connect running in this context (None: no such connect)
_connecting: ContextVar[list[Any] | None] = ContextVar("fluxrun_db_connecting", default=None)
# a SQLAlchemy pool -> the setup calls of its first connection (where the dialect was initialised)
_first_setup: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()


def _recording_key(scope: Scope) -> tuple[int, int]:
    recording = scope.recording
    return (id(recording), recording.started_ns)


def opened(conn: Any, connect: dict[str, Any]) -> Profile | None:
    """A real connection just opened (in an execution or not): its profile, collecting its setup when a
    SQLAlchemy pool is connecting it. Never raises."""
    try:
        pending = _connecting.get()
        profile = Profile(connect, [])
        _profiles[conn] = profile
        if pending is not None:
            setting_up[conn] = profile
            pending.append(conn)
        return profile
    except Exception as exc:
        report_internal_error("db capture", exc)
        return None


def connected(scope: Scope, entry: CallEntry | None, conn: Any, connect: dict[str, Any]) -> None:
    """A connect recorded in an execution succeeded: its event becomes the connection's profile (setup included)."""
    profile = opened(conn, connect)
    if entry is None:
        return
    if profile is None:
        entry.value.update(connect)
    else:
        entry.build = _profile_data
        entry.value = (profile, "during")
        with contextlib.suppress(Exception):
            profile.seen.append(_recording_key(scope))
    finish(entry)


def _profile_data(value: tuple[Profile, str]) -> dict[str, Any]:
    return value[0].event_data(value[1])


def begin(
    scope: Scope | None,
    conn: Any,
    call: str,
    data: dict[str, Any],
    describe: Callable[[], dict[str, Any]] | None = None,
) -> CallEntry | None:
    """Start recording a call made on `conn`: into its setup profile while it is being set up, else into the
    execution, after the connection's connect event the first time the execution uses it. None: not recorded."""
    profile = setting_up.get(conn) if setting_up else None
    if profile is not None:
        return _setup_entry(profile, call, data)
    if scope is None:
        return None
    here = scope.here()  # once: a thread's first call enters a child scope, which both records must share
    attach(here, conn, describe)
    return start(here, call, data)


def begin_from(
    scope: Scope | None,
    conn: Any,
    call: str,
    data: dict[str, Any],
    describe_conn: Callable[[Any], dict[str, Any]],
    caller: FrameType,
) -> CallEntry | None:
    """`begin` for a driver's patch that passes the frame that called the driver (`caller`: the walk to the
    app's frame starts there, past FluxRun's own frames) and one `describe_conn(conn)` for every connection."""
    profile = setting_up.get(conn) if setting_up else None
    if profile is not None:
        return _setup_entry(profile, call, data)
    if scope is None:
        return None
    try:
        frame = first_app_frame(caller, skip_generated=True)  # as `app_frame` finds it, from fewer frames
        site: SiteRef | str = (
            (frame.f_globals.get("__name__", "?"), frame.f_code, frame.f_lasti) if frame is not None else "?:?:0"
        )  # `site_ref(frame)`
        # `attach` when this execution has not recorded the connection's connect event yet (its scopes share
        # one recording)
        try:
            profile = _profile_refs.get(weakref.ref(conn))
        except TypeError:  # a connection that cannot be weakly referenced
            profile = None
        recording = scope.recording
        if profile is None or (id(recording), recording.started_ns) not in profile.seen:
            scope = scope.here()  # once: a thread's first call enters a child scope, which both records share
            attach(scope, conn, None, describe_conn=describe_conn, site=site)
        return start_call(scope, KIND, call, site, data)
    except Exception as exc:
        report_internal_error("db capture", exc)
        return None


def _setup_entry(profile: Profile, call: str, data: dict[str, Any]) -> CallEntry | None:
    """A call made on a connection being set up: kept in its profile (at most `SETUP_MAX_CALLS`)."""
    if profile.setup is None or len(profile.setup) >= SETUP_MAX_CALLS:
        profile.truncated = True
        return None
    entry = detached_call(KIND, call, data)
    profile.setup.append(entry)
    return entry


def attach(
    scope: Scope,
    conn: Any,
    describe: Callable[[], dict[str, Any]] | None = None,
    *,
    describe_conn: Callable[[Any], dict[str, Any]] | None = None,
    site: SiteRef | str | None = None,
) -> None:
    """Record the connection's connect event in this execution, once, before its first call here."""
    try:
        try:  # `_profiles.get(conn)`, without its Python frame
            profile = _profile_refs.get(weakref.ref(conn))
        except TypeError:  # a connection that cannot be weakly referenced
            profile = None
        if profile is None:
            if describe is None and describe_conn is None:
                return
            # opened before FluxRun was installed: its setup is unknown
            profile = Profile(describe() if describe is not None else describe_conn(conn), None)  # type: ignore[misc]
            _profiles[conn] = profile
        recording = scope.recording
        key = (id(recording), recording.started_ns)  # `_recording_key`
        if key in profile.seen:
            return
        profile.seen.append(key)
        data = profile.event_data("before")
        call = f"{data.get('driver')} connect {data.get('target', '')}".rstrip()
        append_value(scope, KIND, call, app_site() if site is None else site, as_data, data)
    except Exception as exc:
        report_internal_error("db capture", exc)


def replayed(conn: Any, event: AnyEvent) -> None:
    """A connection opened at replay: while SQLAlchemy sets it up, its calls are answered from its recorded setup."""
    pending = _connecting.get()
    if pending is None:
        return
    setup = event["data"].get("setup")
    profile = Profile(event["data"], None if setup is None else list(setup), replaying=True)
    setting_up[conn] = profile
    pending.append(conn)


def _serve_setup(scope: Scope, profile: Profile, driver: str, op: str, sql: str | None, params: Any) -> AnyEvent:
    call = label(driver, op, sql)
    match = statement_matcher(op, sql, params)
    for index, recorded in enumerate(profile.setup or ()):
        if match(cast(AnyEvent, {"data": recorded})) is None:  # the matcher reads only the data
            del profile.setup[index]  # type: ignore[union-attr]
            # a setup call, answered from its connection's connect event: no place of its own in the recording
            event = cast(AnyEvent, {"kind": KIND, "call": call, "data": recorded, "error": recorded.get("error")})
            raise_recorded_error(event)
            return event
    if profile.setup is None:
        hint = (
            "  the connection this execution used was opened before FluxRun was installed, so how it was set up "
            "was not recorded: call fluxrun.init() before the app opens its first database connection"
        )
    elif profile.connect.get("setup_truncated"):
        hint = f"  the recorded setup of this connection was cut at {SETUP_MAX_CALLS} calls"
    else:
        hint = (
            "  this call was made while the connection was being set up (SQLAlchemy's dialect initialize or "
            "on_connect), and the recorded setup has no such call: is the driver or SQLAlchemy another version?"
        )
    here = scope.here()
    assert here.session is not None
    raise here.session.diverge(KIND, call, here.path, app_frame(), [], None, hint=hint)


def _setup_seam(original: Callable[[Any], Any], pool_of: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`original(self)`, a framework's connect-and-set-up, delimiting a connection's setup: what the connections
    opened inside it are asked until it returns is their setup (`_connecting`, `_done_setting_up`; `pool_of(self)`
    the pool it is kept for, if any)."""

    @functools.wraps(original)
    def connect_and_set_up(self: Any) -> Any:
        pending: list[Any] = []
        token = _connecting.set(pending)
        ok = False
        try:
            result = original(self)
            ok = True
            return result
        finally:
            with contextlib.suppress(ValueError):
                _connecting.reset(token)
            _done_setting_up(pool_of(self), pending, ok)

    return connect_and_set_up


class SqlalchemyConnectSeam:
    """SQLAlchemy's pool connects and sets up a connection in `_ConnectionRecord.__connect`: the seam that
    delimits a connection's setup (the dialect's initialize and on_connect run inside it), for every driver.
    Built when SQLAlchemy's pool module is imported, before or after `fluxrun.init()`."""

    kind = KIND

    def patches(self) -> list[Patch]:
        pool_base = loaded("sqlalchemy.pool.base")
        record = getattr(pool_base, "_ConnectionRecord", None)
        original = vars(record).get("_ConnectionRecord__connect") if isinstance(record, type) else None
        if not callable(original):
            return []

        seam = _setup_seam(original, lambda record: getattr(record, "_ConnectionRecord__pool", None))
        return [Patch(record, "_ConnectionRecord__connect", seam)]

    def rebind(self) -> dict[int, Any]:
        return {}


class DjangoConnectSeam:
    """Django opens and sets up a connection in `BaseDatabaseWrapper.connect` (the driver's connect, then
    `init_connection_state`: a time zone, sqlite's PRAGMAs): the seam that delimits its setup, as SQLAlchemy's
    pool connect does. A persistent connection (`CONN_MAX_AGE`) set up by an earlier request is then recorded
    with its setup, and a fresh process's connect at replay is answered from it. Built when Django's database
    layer is imported."""

    kind = KIND

    def patches(self) -> list[Patch]:
        base = loaded("django.db.backends.base.base")
        wrapper = getattr(base, "BaseDatabaseWrapper", None)
        original = vars(wrapper).get("connect") if isinstance(wrapper, type) else None
        if not callable(original):
            return []

        return [Patch(wrapper, "connect", _setup_seam(original, lambda _: None))]

    def rebind(self) -> dict[int, Any]:
        return {}


def _done_setting_up(pool: Any, pending: list[Any], ok: bool) -> None:
    for conn in pending:
        profile = setting_up.pop(conn, None)
        if profile is None or profile.replaying or not ok or pool is None or profile.setup is None:
            continue
        try:
            first = _first_setup.get(pool)
            if first is None:
                _first_setup[pool] = profile.setup
            elif first is not profile.setup:
                profile.inherited = first
        except TypeError:  # a pool that cannot be weakly referenced
            pass


# -- replaying ---------------------------------------------------------------------------------------------
def statement_matcher(op: str, sql: str | None, params: Any, driver: str | None = None) -> Matcher:
    """None when a recorded db call is this one (same operation, normalised SQL and parameters), else why not."""

    def describe(data: Mapping[str, Any]) -> str:
        text = str(data.get("op", "?"))
        if data.get("sql") is not None:
            text += f" {data['sql']}"
        if data.get("params") is not None:
            text += f"  params={data['params']!r}"
        return text

    made = {"op": op, "sql": sql, "params": params}

    def match(event: EventDict[DbData]) -> str | None:
        data = event["data"]
        if data.get("op") != op:
            return f"a different database call:\n{short_diff(describe(data), describe(made), width=160)}"
        if op in ("connect", "close"):
            return None if driver is None or data.get("driver") in (None, driver) else f"a {data.get('driver')} connect"
        if data.get("sql") != sql:
            return f"a different statement:\n{short_diff(describe(data), describe(made), width=160)}"
        if data.get("params") != params:
            return f"the same statement with different parameters:\n{short_diff(describe(data), describe(made))}"
        return None

    return match


def serve(
    scope: Scope,
    driver: str,
    op: str,
    sql: str | None = None,
    params: Any = None,
    *,
    conn: Any = None,
    raise_error: bool = True,
) -> AnyEvent:
    """The recorded event answering this db call (its recorded error raised again, unless `raise_error` is
    False: a stream raises it after the rows that came before it); nothing is executed. A call on a connection
    being set up is answered from that connection's recorded setup instead."""
    if setting_up and conn is not None:
        profile = setting_up.get(conn)
        if profile is not None:
            return _serve_setup(scope, profile, driver, op, sql, params)
    here = scope.here()
    frame = app_frame()
    site = site_of(frame)
    session = here.session
    assert session is not None
    call = label(driver, op, sql)
    event = session.take(KIND, call, here.path, frame, site, match=statement_matcher(op, sql, params, driver))
    here.recording.add(KIND, call, here.path, site, {})
    if "done" in event["data"]:  # its completion number: answered in the recorded order (replay/scheduler.py)
        session.wait_turn(event, "result")
    if raise_error:
        raise_recorded_error(event)
    return event


def peek(scope: Scope, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
    """The data of the first db call still to be served in this task that `wanted` accepts (not consumed)."""
    here = scope.here()
    for event in here.session.upcoming(KIND, here.path) if here.session is not None else ():
        if wanted(event["data"]):
            return event["data"]  # type: ignore[no-any-return]
    return None


def refuse_truncated(scope: Scope, event: EventDict[DbData]) -> BaseException:
    """The error for reading past the rows a truncated answer kept."""
    here = scope.here()
    frame = app_frame()
    result = event["data"].get("result") or {}
    limit = result.get("limit")
    assert here.session is not None
    return here.session.refuse(
        KIND,
        str(event.get("call")),
        here.path,
        frame,
        f"the recorded result was truncated at {limit} rows (the row limit) and the code reads past them: "
        "raise max_db_rows (FLUXRUN_MAX_DB_ROWS) where it is captured",
    )


class RowBuffer:
    """The rows of one statement as the app reads them: recorded (or served) ones first, then, at capture,
    the rest from the live cursor (`more`), or, at replay, a refusal when the recorded answer was truncated."""

    __slots__ = ("more", "position", "refuse", "rows", "truncated")

    def __init__(
        self,
        rows: list[Any],
        *,
        truncated: bool = False,
        more: Callable[[int | None], list[Any]] | None = None,
        refuse: Callable[[], BaseException] | None = None,
    ) -> None:
        self.rows = rows
        self.position = 0
        self.truncated = truncated
        self.more = more
        self.refuse = refuse

    def take(self, count: int | None) -> list[Any]:
        """Up to `count` rows (all remaining when None)."""
        start = self.position
        end = len(self.rows) if count is None else min(len(self.rows), start + count)
        out = self.rows[start:end]
        self.position = end
        wanted = None if count is None else count - len(out)
        if (wanted is None or wanted > 0) and self.truncated:
            if self.more is not None:
                out.extend(self.more(wanted))
            elif self.refuse is not None:
                raise self.refuse()
        return out

    def one(self) -> Any:
        """The next row, or None at the end (`take(1)`; the common case, a recorded row, without its list)."""
        position = self.position
        if position < len(self.rows):
            self.position = position + 1
            return self.rows[position]
        got = self.take(1)
        return got[0] if got else None
