"""The recorded event as a bundle's payload holds it: one schema for capture, seal, replay, agent and CLI.

`model/export.py` builds these dicts from a sealed `Recording`; replay, the agent and `fluxrun inspect`
read them back after decoding. They are TypedDicts, so they cost nothing at runtime and the bundle format
is unchanged (docs/bundle-format.md): mypy checks every reader against the one definition.

`EventDict` is generic in its `data`: code that knows an event's kind says so (`EventDict[HttpData]`), and
code that handles every kind reads `AnyEvent`. Interceptor plugins record kinds of their own, so `data`
of an unknown kind is an open dict. Values under `result`, `value`, `args`... are in the encoded form of
`fluxrun.model.values` (`Any` here): only `decode` knows their shape. No `from __future__ import
annotations` here: Python 3.11 reads `NotRequired` and `Required` only from evaluated annotations.
"""

from typing import Any, Generic, NotRequired, Required, TypeAlias, TypedDict, TypeVar

__all__ = [
    "AnyEvent",
    "Body",
    "DbData",
    "DbResult",
    "EnvData",
    "EventDict",
    "EventError",
    "HostData",
    "HttpData",
    "HttpRequest",
    "HttpResponse",
    "LogData",
    "SummaryEvent",
    "TimerData",
    "ValueData",
]

DataT = TypeVar("DataT")


class EventError(TypedDict):
    """The exception a recorded call raised (`hot_path.error_fields`), raised again at replay."""

    type: str  # "module:qualname" (`values.type_path`)
    message: str
    exception: NotRequired[Any]  # the encoded exception, rebuilt as the same class
    key: NotRequired[str]  # env: the variable read, which was not set
    present: NotRequired[bool]  # env: False
    os_error: NotRequired[list[Any]]  # aiohttp: [errno, strerror] of a connection error


class EventDict(TypedDict, Generic[DataT]):
    """One intercepted call, numbered in call order (`seq`); times are from the execution's start."""

    seq: int
    kind: str  # the channel: "http", "env", "db"... or a plugin's own (`model.recording.KINDS`)
    call: str | None  # what summaries show: the operation, never values
    task: str  # the task or thread lineage ("0.1"), `_context.Scope.path`
    site: str  # "module:qualname:line" of the app's line that made the call
    start_ns: int
    dur_ns: int
    data: DataT
    error: NotRequired[EventError]
    supplied: NotRequired[bool]  # replay: an answer the test supplied (`fluxrun.replay.Answers`), not recorded


AnyEvent: TypeAlias = EventDict[Any]


# -- http -------------------------------------------------------------------------------------------------------
class Body(TypedDict, total=False):
    """A request or response body: its bytes as text or base64 (`export.json_body`), up to the body limit."""

    text: str
    base64: str
    size: int | None  # the full size, None when unknown
    truncated: bool  # cut at the body limit
    streamed: bool  # an upload that was not read (a generator): not recorded
    encoding: str  # "decoded" or "raw" (content-encoding not undone)
    complete: bool  # the app read the body to its end
    chunks: list[int]  # the sizes of the pieces the app was handed, in order
    cancelled: bool  # a read was waiting when its task was cancelled
    error: EventError  # reading the body raised


class HttpRequest(TypedDict, total=False):
    method: Required[str]
    url: Required[str]
    headers: list[list[str]]
    body: Body | None


class HttpResponse(TypedDict, total=False):
    status: int
    reason: str
    http_version: str
    headers: list[list[str]]
    redirects: int
    body: Body


class HttpData(TypedDict, total=False):
    client: str  # "httpx", "requests", "urllib3", "aiohttp"
    request: Required[HttpRequest]
    stream: bool
    response: HttpResponse  # absent: the call raised, or never completed
    done: int  # completion order in the execution (replay/scheduler.py); absent: still in flight at the end


# -- the rest of the built-in kinds -------------------------------------------------------------------------------
class EnvData(TypedDict, total=False):
    key: str  # absent when the variable was not set: see `EventError.key`
    present: bool
    value: Any  # the variable's value; the names of all variables for the `os.environ` walk
    reader: str  # a package's or the standard library's read, not the app's


class HostData(TypedDict, total=False):
    """A boundary call (`fluxrun.boundary`)."""

    name: Required[str]
    args: list[Any]
    kwargs: Any
    result: Any
    done: int


class DbResult(TypedDict, total=False):
    description: Any
    rows: Any
    rowcount: int | None
    lastrowid: Any
    zones: Any
    truncated: bool
    limit: int  # the row limit the rows were cut at
    status: str  # asyncpg's command status
    complete: bool  # a server-side cursor or stream: the app read it to its end (else only `rows` were read)
    exhausted: bool  # an asyncpg cursor's portal had no rows left after this call
    advanced: int  # an asyncpg cursor's `forward`: how many rows it moved
    sets: list[dict[str, Any]]  # psycopg: the result sets after the first (`nextset()`), each a result like this


class DbData(TypedDict, total=False):
    driver: str
    op: Required[str]  # "execute", "fetch", "commit", "connect"...
    sql: str | None
    params: Any
    target: str  # connect: host, port and database, no password
    result: DbResult
    setup: list[dict[str, Any]] | None  # connect: the calls that set the connection up
    setup_truncated: int


class LogData(TypedDict, total=False):
    logger: str
    level: str
    message: str
    file: str
    line: int
    exc_type: str


class ValueData(TypedDict, total=False):
    """A clock or randomness read."""

    value: Any
    permutation: list[int]  # random.shuffle


class TimerData(TypedDict):
    seconds: float


# -- the summary ---------------------------------------------------------------------------------------------------
class SummaryEvent(TypedDict):
    """An event as the plaintext summary lists it (`export.build_summary`): no data, a scrubbed label."""

    seq: int
    kind: str
    label: str
    task: str
    start_ms: float
    dur_ms: float
    status: NotRequired[int]
    truncated: NotRequired[bool]
    error_type: NotRequired[str]
    reader: NotRequired[str]
